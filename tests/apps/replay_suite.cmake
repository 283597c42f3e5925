# Runs every standard case through moe-replay under mpirun, checks each result against the float64
# reference, runs them again and requires bitwise identical result files. One job runs every case
# (--case/--out pairs): a program that starts slowly (the Python one imports torch on every rank)
# pays for it once, not once per case.
# With DP > 1 it runs DP data-parallel copies of each case (NP x DP ranks, --dp-size DP).
# EXTRA: more moe-replay arguments (execution options: same results within SPEC.md section 9).
# BOUND: the relative error allowed per tensor (default 1e-5; SPEC.md section 9 allows 1e-2 for bf16).
# CASES: a regex of case names to run (default: every case), for runs that cannot afford them all.
# EXCLUDE: a regex of case names not to run (cases the options in EXTRA do not apply to).
# REPLAY is the command (a list: "python3;-m;moe_ep.replay" runs the Python path); ONCE=ON runs
# the cases once, without the second run's bitwise comparison (the Python suite: determinism is the
# runtime's, which the moe-replay suite checks).
# TAG names the result directories of another REPLAY, so two suites may run at once.
# cmake -DMPIRUN=... -DNP=... [-DDP=...] [-DEXTRA="a;b"] [-DBOUND=...] [-DCASES=regex] [-DEXCLUDE=regex]
#       [-DONCE=ON] [-DTAG=_python]
#       -DREPLAY=... -DTOOL=... -DDIR=... -P replay_suite.cmake
if(NOT DP)
  set(DP 1)
endif()
if(NOT BOUND)
  set(BOUND 1e-5)
endif()
set(runs a b)
if(ONCE)
  set(runs a)
endif()
math(EXPR ranks "${NP} * ${DP}")
file(GLOB cases "${DIR}/*.safetensors")
list(FILTER cases EXCLUDE REGEX "/bad_")
if(CASES)
  list(FILTER cases INCLUDE REGEX "/(${CASES})\\.safetensors$")
endif()
if(EXCLUDE)
  list(FILTER cases EXCLUDE REGEX "/(${EXCLUDE})\\.safetensors$")
endif()
list(LENGTH cases count)
if(count EQUAL 0)
  message(FATAL_ERROR "no cases in ${DIR}")
endif()
string(MAKE_C_IDENTIFIER "${EXTRA}" variant)
set(out_dir "${DIR}/results${TAG}_np${NP}_dp${DP}${variant}")
file(MAKE_DIRECTORY "${out_dir}")

math(EXPR timeout "60 + 30 * ${count}")
foreach(run IN LISTS runs)
  set(pairs "")
  foreach(case IN LISTS cases)
    get_filename_component(name "${case}" NAME_WE)
    file(REMOVE "${out_dir}/${name}.${run}.safetensors")
    list(APPEND pairs --case ${case} --out ${out_dir}/${name}.${run}.safetensors)
  endforeach()
  execute_process(COMMAND ${MPIRUN} -np ${ranks} ${REPLAY} --dp-size ${DP} ${EXTRA} ${pairs}
    RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err TIMEOUT ${timeout})
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "run ${run} of the ${count} cases: ${REPLAY} failed (${rc}):\n${out}\n${err}")
  endif()
endforeach()

set(failed "")
foreach(case IN LISTS cases)
  get_filename_component(name "${case}" NAME_WE)
  execute_process(COMMAND ${TOOL} check ${case} ${out_dir}/${name}.a.safetensors ${BOUND}
    RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  message(STATUS "${out}${err}")
  if(NOT rc EQUAL 0)
    list(APPEND failed ${name})
  endif()
  if(NOT ONCE)
    execute_process(COMMAND ${CMAKE_COMMAND} -E compare_files
      ${out_dir}/${name}.a.safetensors ${out_dir}/${name}.b.safetensors RESULT_VARIABLE same)
    if(NOT same EQUAL 0)
      message(SEND_ERROR "${name}: two runs gave different result files")
      list(APPEND failed ${name})
    endif()
  endif()
endforeach()
if(failed)
  message(FATAL_ERROR "failed on ${NP} ranks x ${DP} copies: ${failed}")
endif()
if(ONCE)
  message(STATUS "all ${count} cases match the reference on ${NP} ranks x ${DP} copies")
else()
  message(STATUS "all ${count} cases match the reference on ${NP} ranks x ${DP} copies, bitwise identical across runs")
endif()

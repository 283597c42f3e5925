# A moe-train run interrupted and resumed has bitwise the losses of an uninterrupted run: resumed
# from its last checkpoint, and from an earlier periodic one.
# cmake -DMPIRUN=... -DNP=2 [-DEXTRA="--ep-size;2"] [-DHALF=15 -DEVERY=5 -DBATCH=256] -DTRAIN=moe-train
#       -DTOOL=train_tool -DDIR=... -P train_resume.cmake
# The first half (HALF steps) saves every EVERY steps; HALF must be a multiple of EVERY.
if(NOT HALF)
  set(HALF 15)
  set(EVERY 5)
endif()
math(EXPR WHOLE "2 * ${HALF}")
math(EXPR EARLIER "${HALF} - ${EVERY}")
math(EXPR AFTER_EARLIER "${EARLIER} + 1")
math(EXPR AFTER_HALF "${HALF} + 1")
string(REGEX REPLACE ".*(........)$" "\\1" earlier_dir "0000000${EARLIER}")
file(REMOVE_RECURSE ${DIR})
file(MAKE_DIRECTORY ${DIR})
if(NOT BATCH)
  set(BATCH 256)
endif()
set(common --batch ${BATCH} --eval-tokens 512 --log-every 1 --baseline none ${EXTRA})

function(run name)
  execute_process(COMMAND ${MPIRUN} -np ${NP} ${TRAIN} ${common} ${ARGN}
    RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err TIMEOUT 120)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${name}: exit ${rc}\n${out}\n${err}")
  endif()
endfunction()

function(compare a b first last)
  execute_process(COMMAND ${TOOL} same-losses ${DIR}/${a}.jsonl ${DIR}/${b}.jsonl ${first} ${last}
    RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${a} vs ${b}, steps ${first}..${last}:\n${out}\n${err}")
  endif()
  message(STATUS "${a} vs ${b}: ${out}")
endfunction()

run(whole --steps ${WHOLE} --json ${DIR}/whole.jsonl)
run(interrupted --steps ${HALF} --save ${DIR}/ckpt --save-every ${EVERY} --json ${DIR}/interrupted.jsonl)
# The last two saves are kept (--keep 2): resume from the earlier, periodic one first, then continue
# the save directory itself (whose later saves then replace them).
run(from_earlier --steps ${WHOLE} --resume ${DIR}/ckpt/step-${earlier_dir} --json ${DIR}/from_earlier.jsonl)
run(resumed --steps ${WHOLE} --resume ${DIR}/ckpt --save ${DIR}/ckpt --save-every ${EVERY}
    --json ${DIR}/resumed.jsonl)
compare(whole interrupted 1 ${HALF})
compare(whole from_earlier ${AFTER_EARLIER} ${WHOLE})
compare(whole resumed ${AFTER_HALF} ${WHOLE})

# Registration helpers for the test suite.
#   moe_add_unit_test(NAME SOURCES ... [LIBS ...])             one process, Catch2's own main
#   moe_add_mpi_test(NAME SOURCES ... [RANKS 1 2 4] [LIBS ...]) one CTest test per rank count,
#                                                              run under mpirun
include(Catch)

set(MOE_TEST_TIMEOUT 300 CACHE STRING "Seconds before CTest kills a test (a hang becomes a failure)")

# Environment every mpirun started by CTest needs on this kind of machine: root is allowed, more
# ranks than cores are allowed, the shared-memory path avoids CMA (slower here), and a rank waiting
# in MPI yields its core (4 ranks on 2 cores otherwise spin against each other), and each rank runs
# one OpenMP thread (oneDNN would start one per core in every rank: 25 training steps at 4 ranks
# took 37 s instead of 1.1 s).
set(MOE_MPI_TEST_ENV
  OMPI_ALLOW_RUN_AS_ROOT=1
  OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
  OMPI_MCA_rmaps_base_oversubscribe=1
  OMPI_MCA_btl_vader_single_copy_mechanism=none
  OMPI_MCA_mpi_yield_when_idle=1
  OMP_NUM_THREADS=1)

function(moe_add_unit_test name)
  cmake_parse_arguments(ARG "" "" "SOURCES;LIBS" ${ARGN})
  add_executable(${name} ${ARG_SOURCES})
  target_link_libraries(${name} PRIVATE moe_catch_main ${ARG_LIBS} moe::warnings)
  catch_discover_tests(${name} EXTRA_ARGS --use-colour no
    PROPERTIES TIMEOUT ${MOE_TEST_TIMEOUT} LABELS unit)
endfunction()

function(moe_add_mpi_test name)
  cmake_parse_arguments(ARG "" "" "SOURCES;LIBS;RANKS" ${ARGN})
  if(NOT ARG_RANKS)
    set(ARG_RANKS 1 2 4)
  endif()
  add_executable(${name} ${ARG_SOURCES})
  target_link_libraries(${name} PRIVATE moe_mpi_catch_main ${ARG_LIBS} moe::warnings)
  foreach(np IN LISTS ARG_RANKS)
    add_test(NAME ${name}_np${np}
      COMMAND ${MPIEXEC_EXECUTABLE} ${MPIEXEC_NUMPROC_FLAG} ${np} ${MPIEXEC_PREFLAGS}
              $<TARGET_FILE:${name}> ${MPIEXEC_POSTFLAGS} --use-colour no)
    set_tests_properties(${name}_np${np} PROPERTIES
      ENVIRONMENT "${MOE_MPI_TEST_ENV}" TIMEOUT ${MOE_TEST_TIMEOUT} LABELS "mpi;np${np}"
      PROCESSORS ${np})
  endforeach()
endfunction()

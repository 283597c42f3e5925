# Builds a target that must not compile: the build fails and its output names MESSAGE (the reason
# the types give), so a failure for another reason (a missing file, a typo) does not pass.
# cmake -DBUILD_DIR=... -DTARGET=... -DMESSAGE=... -P expect_compile_error.cmake
execute_process(COMMAND ${CMAKE_COMMAND} --build ${BUILD_DIR} --target ${TARGET}
  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err TIMEOUT 240)
if(rc EQUAL 0)
  message(FATAL_ERROR "${TARGET} compiled, but it must not:\n${out}\n${err}")
endif()
string(FIND "${out}${err}" "${MESSAGE}" at)
if(at EQUAL -1)
  message(FATAL_ERROR "${TARGET} failed to compile, but not because of '${MESSAGE}':\n${out}\n${err}")
endif()
message(STATUS "${TARGET} does not compile, as required ('${MESSAGE}')")

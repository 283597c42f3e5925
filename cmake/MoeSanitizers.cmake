# Sanitizer builds (CI's "asan", "tsan" and "fuzz" presets): MOE_SANITIZE is passed to -fsanitize= for
# every target. UBSan findings are made fatal so a test fails on them instead of printing a line.
# The run-time options and suppression files live in tests/sanitizers/ (see the presets).
set(MOE_SANITIZE "" CACHE STRING "Sanitizers for every target: address,undefined | thread | empty")
if(MOE_SANITIZE)
  add_compile_options(-fsanitize=${MOE_SANITIZE} -fno-omit-frame-pointer)
  add_link_options(-fsanitize=${MOE_SANITIZE})
  if(MOE_SANITIZE MATCHES "undefined")
    add_compile_options(-fno-sanitize-recover=undefined)
  endif()
  message(STATUS "moe-ep: sanitizers ${MOE_SANITIZE}")
endif()

# libFuzzer targets (tests/fuzz): every library gets the coverage instrumentation the fuzzer
# steers by; the fuzz executables add libFuzzer's main themselves.
option(MOE_BUILD_FUZZERS "Build the libFuzzer targets of tests/fuzz (clang only)" OFF)
if(MOE_BUILD_FUZZERS)
  add_compile_options(-fsanitize=fuzzer-no-link)
endif()

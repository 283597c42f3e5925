# Warning flags shared by every moe-ep target. CI builds with MOE_WERROR=ON.
add_library(moe_warnings INTERFACE)
target_compile_options(moe_warnings INTERFACE
  $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wpedantic -Wshadow -Wconversion -Wno-sign-conversion>
  $<$<AND:$<COMPILE_LANGUAGE:CXX>,$<BOOL:${MOE_WERROR}>>:-Werror>
  # nvcc: its own diagnostics, and the host compiler's on the host half of .cu files.
  $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall,-Wextra,-Wshadow,-Wconversion,-Wno-sign-conversion>
  $<$<AND:$<COMPILE_LANGUAGE:CUDA>,$<BOOL:${MOE_WERROR}>>:-Werror=all-warnings>)
add_library(moe::warnings ALIAS moe_warnings)

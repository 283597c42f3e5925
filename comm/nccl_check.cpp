#include "comm/nccl_check.hpp"

#include <string>

namespace moe::comm::detail {

void throw_cuda_error(cudaError_t code, const char* call, const char* file, int line) {
  std::string text = "CUDA call failed: ";
  text += call;
  text += ": ";
  text += cudaGetErrorName(code);
  text += ": ";
  text += cudaGetErrorString(code);
  text += " (CUDA error code " + std::to_string(static_cast<int>(code)) + ")";
  throw_comm_error(text, file, line);
}

void throw_nccl_error(ncclResult_t code, const char* call, const char* file, int line) {
  std::string text = "NCCL call failed: ";
  text += call;
  text += ": ";
  text += ncclGetErrorString(code);
  // The result code says only the category (e.g. "invalid usage"); the last error says what.
  // NCCL documents the communicator argument as unused (null is fine). The text may describe an
  // earlier failure, so it is labelled as NCCL's last error rather than this call's.
  const char* last = ncclGetLastError(nullptr);
  if (last != nullptr && last[0] != '\0') {
    text += "; last NCCL error: ";
    text += last;
  }
  text += " (NCCL error code " + std::to_string(static_cast<int>(code)) + ")";
  throw_comm_error(text, file, line);
}

}  // namespace moe::comm::detail

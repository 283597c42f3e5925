// The CUDA kernels of experts/: every activation op (experts/device/activation_ops.hpp) launched
// over its index space. This list is what the CUDA build implements; the bodies are the ones the
// host tests run (tests/device/test_device_ops.cpp).
#include "experts/device/activation_ops.hpp"
#include "experts/device/launch_device.cuh"

namespace moe::device {

template cudaError_t launch_device(std::int64_t, const BiasActivationForwardOp&, cudaStream_t);
template cudaError_t launch_device(std::int64_t, const ActivationBackwardOp&, cudaStream_t);
template cudaError_t launch_device(std::int64_t, const SwigluForwardOp&, cudaStream_t);
template cudaError_t launch_device(std::int64_t, const SwigluBackwardOp&, cudaStream_t);
template cudaError_t launch_device(std::int64_t, const ColumnSumOp&, cudaStream_t);
template cudaError_t launch_device(std::int64_t, const AddRowBiasOp&, cudaStream_t);

}  // namespace moe::device

// The CUDA kernels of runtime/: every router and permute op (runtime/device/router_ops.hpp,
// runtime/device/permute_ops.hpp) launched over its index space. This list is what the CUDA
// build implements; the bodies are the ones the host router runs and the host tests check
// (tests/device/test_device_ops.cpp).
#include "experts/device/launch_device.cuh"
#include "runtime/device/permute_ops.hpp"
#include "runtime/device/router_ops.hpp"

namespace moe::device {

template cudaError_t launch_device(std::int64_t, const RouteTokenOp&, cudaStream_t);
template cudaError_t launch_device(std::int64_t, const ProbSumOp&, cudaStream_t);
template cudaError_t launch_device(std::int64_t, const CountOp&, cudaStream_t);
template cudaError_t launch_device(std::int64_t, const LogsumexpSquareSumOp&, cudaStream_t);
template cudaError_t launch_device(std::int64_t, const RouteBackwardTokenOp&, cudaStream_t);
template cudaError_t launch_device(std::int64_t, const SelectionBiasUpdateOp&, cudaStream_t);
template cudaError_t launch_device(std::int64_t, const GatherRowsOp&, cudaStream_t);
template cudaError_t launch_device(std::int64_t, const ZeroPaddingRowsOp&, cudaStream_t);
template cudaError_t launch_device(std::int64_t, const CombineRowsOp&, cudaStream_t);
template cudaError_t launch_device(std::int64_t, const CombineRowsBackwardOp&, cudaStream_t);
template cudaError_t launch_device(std::int64_t, const CombineWeightGradOp&, cudaStream_t);
template cudaError_t launch_device(std::int64_t, const GatherRowsBackwardOp&, cudaStream_t);
template cudaError_t launch_device(std::int64_t, const ToExpertOrderOp&, cudaStream_t);
template cudaError_t launch_device(std::int64_t, const FromExpertOrderOp&, cudaStream_t);
template cudaError_t launch_device(std::int64_t, const AddRowsOp&, cudaStream_t);
template cudaError_t launch_device(std::int64_t, const FirstNonFiniteOp&, cudaStream_t);

}  // namespace moe::device

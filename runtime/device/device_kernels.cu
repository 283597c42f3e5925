// The CUDA kernels of runtime/: every router and permute op (runtime/device/router_ops.hpp,
// runtime/device/permute_ops.hpp) launched over its index space, the ops on wire rows once per
// wire format (fp32, bf16). This list is what the CUDA build implements; the bodies are the ones
// the host router runs and the host tests check (tests/device/test_device_ops.cpp).
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
template cudaError_t launch_device(std::int64_t, const GatherRowsOp<float>&, cudaStream_t);
template cudaError_t launch_device(std::int64_t, const GatherRowsOp<WireBf16>&, cudaStream_t);
template cudaError_t launch_device(std::int64_t, const ZeroPaddingRowsOp<float>&, cudaStream_t);
template cudaError_t launch_device(std::int64_t, const ZeroPaddingRowsOp<WireBf16>&, cudaStream_t);
template cudaError_t launch_device(std::int64_t, const CombineRowsOp<float>&, cudaStream_t);
template cudaError_t launch_device(std::int64_t, const CombineRowsOp<WireBf16>&, cudaStream_t);
template cudaError_t launch_device(std::int64_t, const CombineRowsBackwardOp<float>&, cudaStream_t);
template cudaError_t launch_device(std::int64_t, const CombineRowsBackwardOp<WireBf16>&, cudaStream_t);
template cudaError_t launch_device(std::int64_t, const CombineWeightGradOp<float>&, cudaStream_t);
template cudaError_t launch_device(std::int64_t, const CombineWeightGradOp<WireBf16>&, cudaStream_t);
template cudaError_t launch_device(std::int64_t, const GatherRowsBackwardOp<float>&, cudaStream_t);
template cudaError_t launch_device(std::int64_t, const GatherRowsBackwardOp<WireBf16>&, cudaStream_t);
template cudaError_t launch_device(std::int64_t, const ToExpertOrderOp<float>&, cudaStream_t);
template cudaError_t launch_device(std::int64_t, const ToExpertOrderOp<WireBf16>&, cudaStream_t);
template cudaError_t launch_device(std::int64_t, const FromExpertOrderOp<float>&, cudaStream_t);
template cudaError_t launch_device(std::int64_t, const FromExpertOrderOp<WireBf16>&, cudaStream_t);
template cudaError_t launch_device(std::int64_t, const AddRowsOp&, cudaStream_t);
template cudaError_t launch_device(std::int64_t, const FirstNonFiniteOp&, cudaStream_t);

}  // namespace moe::device

// MOE_HOST_DEVICE marks a function whose body runs both on the host and on a CUDA device: the
// work of every data-path kernel is written once this way, launched by a host loop
// (experts/device/launch_host.hpp) or a CUDA kernel (experts/device/launch_device.hpp), so the host
// test suite runs the very bodies the GPU runs. In a host-only compile (g++, or the host pass of
// a .cpp) the marker is empty.
#pragma once

#if defined(__CUDACC__)
#define MOE_HOST_DEVICE __host__ __device__
#else
#define MOE_HOST_DEVICE
#endif

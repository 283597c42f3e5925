#include "runtime/device/host_backend.hpp"

#include "experts/gemm.hpp"
#include "runtime/device/exchange_bytes.hpp"

namespace moe::device {
namespace {

// Elements a row-major operand of `rows` x `cols` with leading dimension `ld` spans.
std::size_t extent(std::int64_t rows, std::int64_t cols, std::int64_t ld) {
  return static_cast<std::size_t>((rows - 1) * ld + cols);
}

}  // namespace

HostBackend::HostBackend(comm::Communicator& comm)
    : comm_(comm),
      to_peer_(static_cast<std::size_t>(comm.size())),
      from_peer_(static_cast<std::size_t>(comm.size())) {}

void HostBackend::gemm(experts::Op op_a, experts::Op op_b, float alpha, float beta,
                       std::span<const experts::GemmGroup> groups) {
  using experts::Op;
  for (const experts::GemmGroup& g : groups) {
    if (g.m == 0 || g.n == 0 || g.k == 0) continue;
    const std::size_t a_size = op_a == Op::none ? extent(g.m, g.k, g.lda) : extent(g.k, g.m, g.lda);
    const std::size_t b_size = op_b == Op::none ? extent(g.k, g.n, g.ldb) : extent(g.n, g.k, g.ldb);
    experts::gemm(op_a, op_b, g.m, g.n, g.k, alpha, std::span<const float>(g.a, a_size), g.lda,
                  std::span<const float>(g.b, b_size), g.ldb, beta,
                  std::span<float>(g.c, extent(g.m, g.n, g.ldc)), g.ldc);
  }
}

void HostBackend::dispatch(const DispatchPlan& plan, int c, const std::byte* send, std::byte* recv,
                           std::size_t row_bytes) {
  chunk_exchange_bytes(plan, c, row_bytes, to_peer_, from_peer_);
  comm_.alltoallv(send + static_cast<std::size_t>(plan.chunk_send_begin(c)) * row_bytes, to_peer_,
                  recv + static_cast<std::size_t>(plan.chunk_recv_begin(c)) * row_bytes, from_peer_);
}

void HostBackend::combine(const DispatchPlan& plan, int c, const std::byte* recv, std::byte* back,
                          std::size_t row_bytes) {
  chunk_exchange_bytes(plan, c, row_bytes, to_peer_, from_peer_);
  comm_.alltoallv(recv + static_cast<std::size_t>(plan.chunk_recv_begin(c)) * row_bytes, from_peer_,
                  back + static_cast<std::size_t>(plan.chunk_send_begin(c)) * row_bytes, to_peer_);
}

}  // namespace moe::device

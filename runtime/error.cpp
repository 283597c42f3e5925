#include "runtime/error.hpp"

#include <algorithm>
#include <cstdint>
#include <vector>

namespace moe {
namespace {

// "ranks 0-3", "rank 2", "ranks 0, 2, 3".
std::string describe_ranks(const std::vector<int>& ranks, int group_size) {
  if (ranks.size() == 1) return "rank " + std::to_string(ranks[0]);
  if (static_cast<int>(ranks.size()) == group_size) {
    return "ranks 0-" + std::to_string(group_size - 1);
  }
  std::string out = "ranks ";
  for (std::size_t i = 0; i < ranks.size(); ++i) {
    if (i > 0) out += ", ";
    out += std::to_string(ranks[i]);
  }
  return out;
}

}  // namespace

void agree_on_errors(comm::Communicator& comm, const std::string& local_error) {
  std::int64_t failed = local_error.empty() ? 0 : 1;
  comm.allreduce(std::span<std::int64_t>(&failed, 1), comm::ReduceOp::max);
  if (failed != 0) raise_agreed_error(comm, local_error);
}

void raise_agreed_error(comm::Communicator& comm, const std::string& local_error) {
  const int size = comm.size();
  std::int64_t longest = static_cast<std::int64_t>(local_error.size());
  comm.allreduce(std::span<std::int64_t>(&longest, 1), comm::ReduceOp::max);

  // Fixed-size blocks (length prefix + text) so one allgather carries every rank's message.
  const std::size_t block = sizeof(std::int64_t) + static_cast<std::size_t>(longest);
  std::vector<std::byte> mine(block), all(block * static_cast<std::size_t>(size));
  const std::int64_t length = static_cast<std::int64_t>(local_error.size());
  std::copy_n(reinterpret_cast<const std::byte*>(&length), sizeof length, mine.data());
  std::copy_n(reinterpret_cast<const std::byte*>(local_error.data()), local_error.size(),
              mine.data() + sizeof length);
  comm.allgather(mine.data(), all.data(), block);

  // Group identical messages so "the same problem on every rank" reads as one line.
  std::vector<std::pair<std::string, std::vector<int>>> causes;
  for (int r = 0; r < size; ++r) {
    const std::byte* p = all.data() + block * static_cast<std::size_t>(r);
    std::int64_t n = 0;
    std::copy_n(p, sizeof n, reinterpret_cast<std::byte*>(&n));
    if (n == 0) continue;
    std::string text(reinterpret_cast<const char*>(p + sizeof n), static_cast<std::size_t>(n));
    auto it = std::find_if(causes.begin(), causes.end(),
                           [&](const auto& c) { return c.first == text; });
    if (it == causes.end()) {
      causes.push_back({std::move(text), {r}});
    } else {
      it->second.push_back(r);
    }
  }
  if (causes.empty()) causes.push_back({"an unspecified error", {}});  // status set, no text

  std::string message;
  for (const auto& [text, ranks] : causes) {
    if (!message.empty()) message += "; ";
    message += text;
    if (!ranks.empty()) message += " (" + describe_ranks(ranks, size) + ")";
  }
  throw Error(message);
}

}  // namespace moe

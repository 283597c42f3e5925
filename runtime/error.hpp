// The one exception type of the runtime, and the agreement that makes errors collective: a failure
// met by one rank is made known to every rank of the group before the next collective, so every
// rank reports the same message instead of some ranks waiting forever in an all-to-all.
#pragma once

#include <stdexcept>
#include <string>

#include "comm/communicator.hpp"

namespace moe {

// An error the user can act on: bad configuration, bad input, a file that does not match.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Collective: every rank of `comm` calls it with its own error text ("" when it has none). If any
// rank has one, every rank throws the same moe::Error naming the failing ranks and their causes;
// otherwise it returns. Costs one small all-reduce when nobody failed.
void agree_on_errors(comm::Communicator& comm, const std::string& local_error);

// Collective: like agree_on_errors, for ranks that already know (from a status word piggybacked on
// an earlier collective) that some rank failed. Every rank throws the agreed moe::Error.
[[noreturn]] void raise_agreed_error(comm::Communicator& comm, const std::string& local_error);

// Runs `body` on every rank; an exception it throws on any rank becomes the same moe::Error on
// every rank. `body` must not itself enter a collective of `comm` (it is the part that may fail
// locally, like reading a file or checking a shape).
template <class Body>
void collectively(comm::Communicator& comm, Body&& body) {
  std::string local_error;
  try {
    body();
  } catch (const std::exception& e) {
    local_error = e.what();
    if (local_error.empty()) local_error = "unknown error";
  }
  agree_on_errors(comm, local_error);
}

}  // namespace moe

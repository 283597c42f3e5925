// Runs a test under one row policy of experts/matmul_cache (both must give the same results),
// restoring the automatic choice's value afterwards.
#pragma once

#include "experts/matmul_cache.hpp"

namespace moe::experts::test {

class RowPolicyScope {
 public:
  explicit RowPolicyScope(detail::RowPolicy policy) : saved_(detail::row_policy()) {
    detail::set_row_policy(policy);
  }
  ~RowPolicyScope() { detail::set_row_policy(saved_); }
  RowPolicyScope(const RowPolicyScope&) = delete;
  RowPolicyScope& operator=(const RowPolicyScope&) = delete;

 private:
  detail::RowPolicy saved_;
};

}  // namespace moe::experts::test

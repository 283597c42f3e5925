// Test companion of moe-replay.
//   replay_tool make-cases DIR RANKS   writes the standard layer cases for RANKS ranks into DIR,
//                                      plus bad_*.safetensors cases that must be refused
//   replay_tool make-bf16-cases DIR RANKS  writes the cases for the bf16 formats into DIR
//   replay_tool check CASE RESULT [BOUND]
//                                      compares a result file with the float64 reference of the
//                                      case: relative error <= BOUND per tensor (default 1e-5, SPEC.md
//                                      section 9's fp32 bound; 1e-2 for bf16; gradients of relu
//                                      layers 0.1 with a bound above 1e-5, see case_bridge.hpp),
//                                      counts exactly; exit 1 on a mismatch
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <string>

#include "experts/expert_shard.hpp"
#include "runtime/layer_case.hpp"
#include "tests/support/case_bridge.hpp"

using namespace moe;

namespace {

int make_cases(const std::filesystem::path& dir, int ranks) {
  std::filesystem::create_directories(dir);
  for (const auto& named : test::standard_cases(ranks)) {
    write_safetensors(dir / (named.name + ".safetensors"), test::to_case_file(ref::make_case(named.spec)));
  }
  // Cases every rank must refuse with the same message (see tests/apps/CMakeLists.txt).
  const auto base = test::standard_cases(ranks).front();
  // One forward-only case: no grad_output, so no gradients in the result.
  auto forward_only = base.spec;
  forward_only.with_grad_output = false;
  write_safetensors(dir / "forward_only.safetensors", test::to_case_file(ref::make_case(forward_only)));

  SafetensorsFile file = test::to_case_file(ref::make_case(base.spec));
  auto edit = [&](const std::string& name, auto&& change) {
    SafetensorsFile bad = file;
    change(bad);
    write_safetensors(dir / ("bad_" + name + ".safetensors"), bad);
  };
  edit("top_k", [](SafetensorsFile& f) { f.metadata["top_k"] = "two"; });
  edit("negative_tokens", [](SafetensorsFile& f) { f.metadata["tokens_per_rank"] = "-3"; });
  edit("missing_expert", [](SafetensorsFile& f) { f.tensors.erase("experts.3.w2.weight"); });
  edit("extra_tensor", [](SafetensorsFile& f) {
    f.tensors["experts.0.w3.weight"] = f.tensors.at("experts.0.w1.weight");
  });
  edit("rank_count", [](SafetensorsFile& f) {
    f.metadata["tokens_per_rank"] += ",0";  // one more rank than the job will have
  });
  return 0;
}

int make_bf16_cases(const std::filesystem::path& dir, int ranks) {
  std::filesystem::create_directories(dir);
  auto cases = test::bf16_cases(ranks);
  // And the parts those leave out: a shared expert (bf16 too), the sigmoid gate and its bias.
  test::NamedCase shared = cases.back();
  shared.name = "wide_shared_sigmoid";
  shared.spec.config.d_shared_hidden = 80;
  shared.spec.config.gate = "sigmoid";
  shared.spec.config.bias_update_rate = 0.01;
  shared.spec.with_score_bias = true;
  cases.push_back(shared);
  for (const auto& named : cases) {
    write_safetensors(dir / (named.name + ".safetensors"), test::to_case_file(ref::make_case(named.spec)));
  }
  return 0;
}

int check(const std::string& case_path, const std::string& result_path, double bound) {
  const LayerCase lc = read_layer_case(case_path);
  const SafetensorsFile result = read_safetensors(result_path);

  // The reference case from the file: the file is the ground truth both sides read.
  const ref::LayerCase c = test::from_case_file(lc);
  const ref::LayerResult expected = ref::run_reference(c);

  const bool relu_narrow = bound > 1e-5 && lc.config.activation == experts::Activation::relu;
  const double grad_bound = relu_narrow ? std::max(bound, test::kReluBf16GradientBound) : bound;
  int failures = 0;
  auto tensor_error = [&](const std::string& name, const std::vector<double>& want, double limit) {
    auto it = result.tensors.find(name);
    if (it == result.tensors.end()) {
      std::cerr << "check: result has no tensor '" << name << "'\n";
      ++failures;
      return;
    }
    test::ErrorSums err;
    err.add(it->second.f32(), want);
    const double rel = err.relative();
    if (!(rel <= limit)) {
      std::cerr << "check: " << name << " relative error " << rel << " > " << limit << "\n";
      ++failures;
    }
  };
  auto exact = [&](const std::string& name, const std::vector<std::int64_t>& want) {
    auto it = result.tensors.find(name);
    const bool same = it != result.tensors.end() &&
                      std::vector<std::int64_t>(it->second.i64().begin(), it->second.i64().end()) == want;
    if (!same) {
      std::cerr << "check: " << name << " differs from the reference\n";
      ++failures;
    }
  };
  tensor_error("output", expected.output, bound);
  tensor_error("aux_loss", {expected.aux_loss}, bound);
  tensor_error("z_loss", {expected.z_loss}, bound);
  exact("expert_counts", expected.expert_counts);
  exact("expert_kept", expected.expert_kept);
  if (!expected.score_bias_updated.empty()) tensor_error(std::string(kSelectionBias), expected.score_bias_updated, bound);
  if (expected.grads) {
    tensor_error("grad_input", expected.grads->input, grad_bound);
    tensor_error("gate.weight.grad", expected.grads->params.gate, grad_bound);
    for (std::int64_t e = 0; e < lc.config.num_experts; ++e) {
      for (std::string_view param : experts::expert_param_names(lc.config.activation)) {
        tensor_error("experts." + std::to_string(e) + "." + std::string(param) + ".grad",
                     test::expert_param(expected.grads->params.experts[static_cast<std::size_t>(e)], param),
                     grad_bound);
      }
    }
    if (expected.grads->params.shared_expert) {
      for (std::string_view param : experts::expert_param_names(lc.config.activation)) {
        tensor_error(std::string(kSharedPrefix) + std::string(param) + ".grad",
                     test::expert_param(*expected.grads->params.shared_expert, param), grad_bound);
      }
    }
  } else if (result.tensors.count("grad_input")) {
    std::cerr << "check: the case has no grad_output but the result has gradients\n";
    ++failures;
  }
  std::cout << "check: " << (failures ? "FAILED " : "ok ") << case_path << "\n";
  return failures ? 1 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const std::string mode = argc > 1 ? argv[1] : "";
    if (mode == "make-cases" && argc == 4) return make_cases(argv[2], std::atoi(argv[3]));
    if (mode == "make-bf16-cases" && argc == 4) return make_bf16_cases(argv[2], std::atoi(argv[3]));
    if (mode == "check" && (argc == 4 || argc == 5)) return check(argv[2], argv[3], argc == 5 ? std::stod(argv[4]) : 1e-5);
    std::cerr << "usage: replay_tool make-cases DIR RANKS | make-bf16-cases DIR RANKS | check CASE RESULT [BOUND]\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "replay_tool: " << e.what() << "\n";
    return 1;
  }
}

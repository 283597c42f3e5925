#include <catch2/catch.hpp>

#include <cmath>

#include "runtime/config.hpp"
#include "runtime/config_fields.hpp"
#include "runtime/stats.hpp"
#include "runtime/error.hpp"

using namespace moe;

namespace {
MoeConfig valid() {
  MoeConfig c;
  c.num_experts = 8;
  c.d_model = 16;
  c.d_hidden = 32;
  return c;
}
}  // namespace

TEST_CASE("defaults are those of SPEC.md", "[config]") {
  const MoeConfig c;
  CHECK(c.top_k == 2);
  CHECK(c.capacity_factor == 1.25);
  CHECK(c.min_capacity == 4);
  CHECK(c.drop_policy == DropPolicy::position);
  CHECK(c.activation == experts::Activation::gelu);
  CHECK_FALSE(c.normalize_topk);
  CHECK(c.aux_loss_coef == 0.01);
  CHECK(c.z_loss_coef == 0.0);
  // Version 2: every new key's default gives the version-1 layer.
  CHECK(c.gate == GateKind::softmax);
  CHECK(c.n_group == 1);
  CHECK(c.groups_per_token() == 1);
  CHECK(c.routed_scaling_factor == 1.0);
  CHECK(c.capacity_scope == CapacityScope::rank);
  CHECK(c.bias_update_rate == 0.0);
  CHECK_FALSE(c.has_shared_expert());
}

TEST_CASE("validation names the option and the rule", "[config]") {
  MoeConfig c = valid();
  CHECK_NOTHROW(c.validate());
  c.top_k = 0;
  CHECK_THROWS_WITH(c.validate(), "top_k=0 is outside 1..num_experts (8)");
  c = valid();
  c.top_k = 9;
  CHECK_THROWS_WITH(c.validate(), "top_k=9 is outside 1..num_experts (8)");
  c = valid();
  c.d_model = 0;
  CHECK_THROWS_WITH(c.validate(), "d_model=0 must be at least 1");
  c = valid();
  c.d_hidden = -3;
  CHECK_THROWS_WITH(c.validate(), "d_hidden=-3 must be at least 1");
  c = valid();
  c.num_experts = 0;
  CHECK_THROWS_WITH(c.validate(), "num_experts=0 must be at least 1");
  c = valid();
  c.min_capacity = -1;
  CHECK_THROWS_WITH(c.validate(), "min_capacity=-1 must be at least 0");
  c = valid();
  c.aux_loss_coef = -0.5;
  CHECK_THROWS_WITH(c.validate(), "aux_loss_coef=-0.5 must be finite and >= 0");
  c = valid();
  c.capacity_factor = std::numeric_limits<double>::infinity();
  CHECK_THROWS_WITH(c.validate(), "capacity_factor=inf must be finite");
  c = valid();
  c.capacity_factor = -1;  // dropless is a legal choice
  CHECK_NOTHROW(c.validate());
  CHECK(c.dropless());
}

TEST_CASE("version-2 keys: every rule is an error naming the key", "[config]") {
  MoeConfig c = valid();
  c.n_group = 3;
  CHECK_THROWS_WITH(c.validate(), "n_group=3 does not divide num_experts (8)");
  c = valid();
  c.n_group = 0;
  CHECK_THROWS_WITH(c.validate(), "n_group=0 must be at least 1");
  c = valid();
  c.n_group = 4;
  c.topk_group = 5;
  CHECK_THROWS_WITH(c.validate(), "topk_group=5 is outside 1..n_group (4)");
  c.topk_group = 1;  // one group of two experts: at most k = 2
  c.top_k = 3;
  CHECK_THROWS_WITH(c.validate(), Catch::StartsWith("top_k=3 is more than the 2 experts of the topk_group=1 groups"));
  c.top_k = 2;
  CHECK_NOTHROW(c.validate());
  c = valid();
  c.routed_scaling_factor = 0;
  CHECK_THROWS_WITH(c.validate(), "routed_scaling_factor=0 must be finite and > 0");
  c = valid();
  c.bias_update_rate = 0.001;
  CHECK_THROWS_WITH(c.validate(), "bias_update_rate=0.001 needs gate=sigmoid (the selection bias exists only there)");
  c.gate = GateKind::sigmoid;
  CHECK_NOTHROW(c.validate());
  c.bias_update_rate = -1;
  CHECK_THROWS_WITH(c.validate(), "bias_update_rate=-1 must be finite and >= 0");
  c = valid();
  c.d_shared_hidden = -1;
  CHECK_THROWS_WITH(c.validate(), "d_shared_hidden=-1 must be at least 0");
  c = valid();
  c.overlap_chunks = 65;
  CHECK_THROWS_WITH(c.validate(), "overlap_chunks=65 is outside 1..64 (or auto)");
}

TEST_CASE("the field table drives the summary, the fields and the metadata", "[config]") {
  MoeConfig c = valid();
  c.gate = GateKind::sigmoid;
  c.n_group = 4;
  c.topk_group = 2;
  c.routed_scaling_factor = 2.5;
  c.capacity_scope = CapacityScope::global;
  c.bias_update_rate = 0.001;
  const auto meta = c.options_to_metadata();
  CHECK(meta.at("gate") == "sigmoid");
  CHECK(meta.at("n_group") == "4");
  CHECK(meta.at("topk_group") == "2");
  CHECK(meta.at("routed_scaling_factor") == "2.5");
  CHECK(meta.at("capacity_scope") == "global");
  CHECK(meta.at("bias_update_rate") == "0.001");
  CHECK(meta.count("num_experts") == 0);  // shapes come from the tensors
  CHECK(meta.count("wire") == 0);         // execution options are not part of a case
  MoeConfig back = valid();
  back.options_from_metadata(meta);
  CHECK(back.fields() == c.fields());
  CHECK(c.summary().find("gate=sigmoid n_group=4 topk_group=2") != std::string::npos);
  // The default topk_group (all groups) is written as its SPEC value.
  CHECK(valid().options_to_metadata().at("topk_group") == "1");
}

TEST_CASE("compute is an execution field and an unset wire follows it", "[config][bf16]") {
  MoeConfig c = valid();
  CHECK(c.wire_format() == WireFormat::fp32);
  const ConfigField* compute = find_config_field("compute");
  const ConfigField* wire = find_config_field("wire");
  REQUIRE(compute != nullptr);
  REQUIRE(wire != nullptr);
  CHECK(compute->kind == FieldKind::execution);  // a layer case never carries it
  CHECK(wire->to_text(c) == "auto");
  compute->from_text(c, "bf16");
  CHECK(c.compute == experts::Compute::bf16);
  CHECK(c.wire_format() == WireFormat::bf16);
  // A wire the user gave is kept, whatever the compute.
  wire->from_text(c, "fp32");
  CHECK(c.wire_format() == WireFormat::fp32);
  CHECK(c.summary().find("compute=bf16 wire=fp32") != std::string::npos);
  wire->from_text(c, "auto");
  CHECK(c.wire_format() == WireFormat::bf16);
  CHECK_THROWS_WITH(compute->from_text(c, "fp16"), "compute 'fp16' is not one of: fp32, bf16");
  CHECK_THROWS_WITH(wire->from_text(c, "fp16"), "wire 'fp16' is not one of: fp32, bf16, auto");
  CHECK(c.options_to_metadata().count("compute") == 0);
}

TEST_CASE("unknown metadata keys are refused, naming the key", "[config]") {
  MoeConfig c = valid();
  CHECK_THROWS_WITH(c.options_from_metadata({{"capacity_scope", "node"}}),
                    "capacity_scope 'node' is not one of: rank, global");
  CHECK_THROWS_WITH(c.options_from_metadata({{"gate", "tanh"}}), "gate 'tanh' is not one of: softmax, sigmoid");
  CHECK_THROWS_WITH(c.options_from_metadata({{"expert_bias", "1"}}),
                    Catch::StartsWith("metadata key 'expert_bias' is not an option of this layer (known: "));
  // Shapes and execution options are not metadata keys either.
  CHECK_THROWS_WITH(c.options_from_metadata({{"wire", "bf16"}}),
                    Catch::StartsWith("metadata key 'wire' is not an option of this layer"));
  CHECK_THROWS_WITH(c.options_from_metadata({{"topk_group", "0"}}), "topk_group=0 is outside 1..n_group (1)");
  CHECK_NOTHROW(c.options_from_metadata({{"tokens_per_rank", "1,2"}, {"top_k", "1"}}, {"tokens_per_rank"}));
  CHECK(c.top_k == 1);
}

TEST_CASE("metadata round trip and strict parsing", "[config]") {
  MoeConfig c = valid();
  c.top_k = 3;
  c.capacity_factor = 0.3;
  c.min_capacity = 0;
  c.drop_policy = DropPolicy::score;
  c.activation = experts::Activation::swiglu;
  c.normalize_topk = true;
  c.aux_loss_coef = 0.125;
  c.z_loss_coef = 1e-3;
  MoeConfig back = valid();
  back.options_from_metadata(c.options_to_metadata());
  CHECK(back.top_k == 3);
  CHECK(back.capacity_factor == 0.3);
  CHECK(back.min_capacity == 0);
  CHECK(back.drop_policy == DropPolicy::score);
  CHECK(back.activation == experts::Activation::swiglu);
  CHECK(back.normalize_topk);
  CHECK(back.aux_loss_coef == 0.125);
  CHECK(back.z_loss_coef == 1e-3);

  MoeConfig d = valid();
  CHECK_THROWS_WITH(d.options_from_metadata({{"top_k", "2x"}}), "top_k: '2x' is not an integer");
  CHECK_THROWS_WITH(d.options_from_metadata({{"top_k", ""}}), "top_k: '' is not an integer");
  CHECK_THROWS_WITH(d.options_from_metadata({{"capacity_factor", "nan"}}),
                    "capacity_factor: 'nan' is not a finite number");
  CHECK_THROWS_WITH(d.options_from_metadata({{"normalize_topk", "yes"}}),
                    "normalize_topk: 'yes' is not true or false");
  CHECK_THROWS_WITH(d.options_from_metadata({{"drop_policy", "random"}}),
                    "drop_policy 'random' is not one of: position, score");
  CHECK_THROWS_WITH(d.options_from_metadata({{"activation", "tanh"}}),
                    "activation 'tanh' is not one of: gelu, gelu_tanh, relu, silu, swiglu");
  CHECK(d.top_k == 2);  // a failed parse leaves the option as it was
}

TEST_CASE("the load spread of a forward: max/mean, least and standard deviation", "[stats]") {
  ForwardStats stats;
  stats.expert_counts = {10, 2, 4, 4};  // mean 5
  stats.set_load_spread();
  CHECK(stats.load_max_over_mean == 2.0);
  CHECK(stats.load_min == 2);
  CHECK(stats.load_std == Approx(std::sqrt((25.0 + 9 + 1 + 1) / 4)));
  stats.expert_counts = {0, 0};  // an empty group
  stats.set_load_spread();
  CHECK(stats.load_max_over_mean == 0.0);
  CHECK(stats.load_std == 0.0);
}

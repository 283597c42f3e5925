// Helper of the end-to-end moe-train tests: reads the JSON lines moe-train writes and damages
// checkpoint files on purpose.
//
//   train_tool same-losses A.jsonl B.jsonl FIRST LAST  steps FIRST..LAST: bitwise equal loss and
//                                                      aux in both (and the same final eval loss
//                                                      and selection biases when both end at the
//                                                      same step)
//   train_tool learned RUN.jsonl MIN_RATIO MIN_PURITY  eval loss fell MIN_RATIO-fold and every
//                                                      MoE layer's mean purity >= MIN_PURITY
//   train_tool flip FILE                               flips one bit near the end of FILE
#include <cstdio>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>

using nlohmann::json;

namespace {

struct Run {
  std::map<long long, json> progress;  // step -> line (model "moe")
  json summary;
};

Run read_run(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot read " + path);
  Run run;
  std::string line;
  while (std::getline(in, line)) {
    const json j = json::parse(line);
    if (j.at("type") == "summary") run.summary = j;
    if (j.at("type") == "progress" && j.at("model") == "moe") run.progress[j.at("step")] = j;
  }
  if (run.summary.is_null()) throw std::runtime_error(path + " has no summary line");
  return run;
}

int same_losses(const std::string& a_path, const std::string& b_path, long long first,
                long long last) {
  const Run a = read_run(a_path), b = read_run(b_path);
  int wrong = 0;
  for (long long step = first; step <= last; ++step) {
    if (!a.progress.count(step) || !b.progress.count(step)) {
      std::printf("step %lld: missing in %s\n", step, a.progress.count(step) ? "B" : "A");
      ++wrong;
      continue;
    }
    for (const char* key : {"loss", "aux"}) {
      // JSON numbers from nlohmann round-trip exactly: equal doubles mean equal bits.
      const double x = a.progress.at(step).at(key), y = b.progress.at(step).at(key);
      if (x != y) {
        std::printf("step %lld: %s %.17g vs %.17g\n", step, key, x, y);
        ++wrong;
      }
    }
  }
  // Runs that end at the same step end with the same evaluation.
  const json& end_a = a.summary.at("end");
  const json& end_b = b.summary.at("end");
  if (a.summary.at("last_step") == b.summary.at("last_step")) {
    const double ea = end_a.at("loss"), eb = end_b.at("loss");
    if (ea != eb) {
      std::printf("final eval loss %.17g vs %.17g\n", ea, eb);
      ++wrong;
    }
    if (end_a.value("selection_bias", json()) != end_b.value("selection_bias", json())) {
      std::printf("final selection bias %s vs %s\n", end_a.value("selection_bias", json()).dump().c_str(),
                  end_b.value("selection_bias", json()).dump().c_str());
      ++wrong;
    }
  }
  std::printf("%s: steps %lld..%lld compared, %d differences\n", wrong ? "FAIL" : "ok", first, last,
              wrong);
  return wrong ? 1 : 0;
}

int learned(const std::string& path, double min_ratio, double min_purity) {
  const Run run = read_run(path);
  const double start = run.summary.at("start").at("loss"), end = run.summary.at("end").at("loss");
  bool ok = start / end >= min_ratio;
  std::printf("eval loss %.5f -> %.5f (%.1fx, need %.1fx)\n", start, end, start / end, min_ratio);
  const json& purity = run.summary.at("end").at("purity");
  if (purity.empty()) ok = false;
  for (std::size_t l = 0; l < purity.size(); ++l) {
    double sum = 0;
    for (double p : purity[l]) sum += p;
    const double mean = sum / static_cast<double>(purity[l].size());
    std::printf("layer %zu: mean purity %.3f (need %.2f)\n", l, mean, min_purity);
    ok = ok && mean >= min_purity;
  }
  std::printf("%s\n", ok ? "ok" : "FAIL");
  return ok ? 0 : 1;
}

int flip(const std::string& path) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(-3, std::ios::end);
  char c = 0;
  f.get(c);
  f.seekp(-3, std::ios::end);
  f.put(static_cast<char>(c ^ 0x10));
  return f ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const std::string command = argc > 1 ? argv[1] : "";
    if (command == "same-losses" && argc == 6) {
      return same_losses(argv[2], argv[3], std::stoll(argv[4]), std::stoll(argv[5]));
    }
    if (command == "learned" && argc == 5) return learned(argv[2], std::stod(argv[3]), std::stod(argv[4]));
    if (command == "flip" && argc == 3) return flip(argv[2]);
    std::fprintf(stderr, "usage: train_tool same-losses|learned|flip ... (see the source)\n");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "train_tool: %s\n", e.what());
  }
  return 2;
}

#!/usr/bin/python3
"""moe-model: fit the performance model on a study directory and predict a cluster.

    python3 apps/moe_model.py --study study                       # fit, validate, H100 preset
    python3 apps/moe_model.py --study study --gemm-tflops 400 --ranks 8,64,512 --tokens 8192
    python3 apps/moe_model.py --study study --intra-gbps 100 --inter-gbps 25 --gpus-per-node 4

The model is described in apps/moe_study/model.py. Without --gemm-tflops the cluster prediction
leaves the GEMMs out (communication and element-wise work only).
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from moe_study import grid as grid_mod  # noqa: E402
from moe_study import model as mdl  # noqa: E402
from moe_study import report as rep  # noqa: E402
from moe_study import runner  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(prog="moe-model", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--study", required=True, help="a moe-sweep study directory")
    ap.add_argument("--fit-where", help='JSON: which points to fit on, e.g. {"ranks": [1, 2]}')
    ap.add_argument("--preset", default="h100", choices=sorted(mdl.PRESETS))
    ap.add_argument("--gemm-tflops", type=float, help="GEMM rate of one GPU (TFLOP/s)")
    ap.add_argument("--ranks", default=",".join(map(str, rep.DEFAULT_RANKS)))
    for name in ("intra-gbps", "inter-gbps", "intra-alpha-us", "inter-alpha-us", "hbm-gbps"):
        ap.add_argument(f"--{name}", type=float)
    ap.add_argument("--gpus-per-node", type=int)
    ap.add_argument("--tokens", type=int, help="tokens per GPU")
    ap.add_argument("--d-model", type=int)
    ap.add_argument("--d-hidden", type=int)
    ap.add_argument("--top-k", type=int)
    ap.add_argument("--imbalance", type=float, help="max/mean kept rows over ranks")
    ap.add_argument("--chunks", type=int)
    ap.add_argument("--wire", choices=["fp32", "bf16"])
    a = ap.parse_args(argv)

    data = json.load(open(os.path.join(a.study, "grid.json")))
    data.pop("_source", None)
    g = grid_mod.Grid(data, source=os.path.join(a.study, "grid.json"))
    results = runner.load_results(os.path.join(a.study, "results.jsonl"))
    info = json.load(open(os.path.join(a.study, "machine.json")))
    cl = dict(g.model.get("cluster", {}))
    cl["preset"] = a.preset
    over = dict(cl.get("overrides", {}))
    for name in ("intra_gbps", "inter_gbps", "intra_alpha_us", "inter_alpha_us", "hbm_gbps", "gpus_per_node"):
        if getattr(a, name) is not None:
            over[name] = getattr(a, name)
    cl["overrides"] = over
    wl = dict(cl.get("workload", {}))
    for opt, key in (("tokens", "T"), ("d_model", "d"), ("d_hidden", "h"), ("top_k", "k"),
                     ("imbalance", "imbalance"), ("chunks", "chunks")):
        if getattr(a, opt) is not None:
            wl[key] = getattr(a, opt)
    if a.wire:
        wl["wire_bytes"] = 2 if a.wire == "bf16" else 4
    cl["workload"] = wl
    cl["ranks"] = [int(r) for r in a.ranks.split(",")]
    cl["gemm_tflops"] = a.gemm_tflops if a.gemm_tflops is not None else cl.get("gemm_tflops")
    g.model["cluster"] = cl
    if a.fit_where:
        g.model["fit_where"] = json.loads(a.fit_where)
    an = rep.analyse(g, results, info["cores"])
    print(f"fitted on {an['summary_fit']['points']} points where {json.dumps(an['fit_where'])}")
    for name, value, se, unit in an["model"].fit_report:
        print(f"  {name:32s} {value:10.4g} ± {se:.2g} {unit}")
    for comp, (rms, n) in an["model"].fit_quality.items():
        print(f"  fit residual, {comp}: {100 * rms:.1f} % RMS over {n} values")
    s = an["summary_held"]
    print(f"held out {s['points']} points: median |error| {100 * s['median_abs_error']:.1f} %, "
          f"max {100 * s['max_abs_error']:.1f} %, RMS {100 * s['rms_error']:.1f} %")
    labels = {p.key: f"{p.study}: {p.label()}" for p in g.unique_points()}
    for r, meas, pred, err in an["rows_held"]:
        print(f"  {labels.get(r['key'], r['key']):60s} measured {meas:8.2f} ms  predicted {pred:8.2f} ms  "
              f"{100 * err:+6.1f} %")
    c = an["cluster"]
    print(f"\n{c['preset']} preset {json.dumps(c['params'])}\nworkload {json.dumps(c['workload'])}, "
          + (f"GEMMs at {c['gemm_tflops']} TFLOP/s" if c["gemm_tflops"] else "no GEMM rate: GEMMs left out"))
    print(f"{'GPUs':>6} {'nodes':>5} {'intra ms':>9} {'inter ms':>9} {'exch ms':>8} {'GEMM ms':>8} "
          f"{'other ms':>8} {'step ms':>8} {'tok/s/GPU':>10}")
    for r in c["rows"]:
        print(f"{r['P']:>6} {r['nodes']:>5} {1e3 * r['intra']:9.3f} {1e3 * r['inter']:9.3f} {1e3 * r['exchange']:8.3f} "
              f"{1e3 * r['gemm']:8.3f} {1e3 * r['other']:8.3f} {1e3 * r['step']:8.3f} {r['tokens_per_s_per_rank']:10.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

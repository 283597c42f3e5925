"""The study's Markdown report, and the model analysis it embeds."""
import json
import os
import time

from . import model as mdl
from . import plots

DEFAULT_WORKLOAD = {"T": 4096, "d": 4096, "h": 14336, "k": 2, "n_mats": 3, "kept_share": 1.0,
                    "imbalance": 1.0, "wire_bytes": 2, "chunks": 1}
DEFAULT_RANKS = [8, 16, 32, 64, 128, 256, 512, 1024]


def analyse(grid, results, cores, out_dir=None, log=None):
    """Fits the model, validates it on held-out points, predicts the cluster preset."""
    cfg = grid.model
    records = [r for r in results.values() if r.get("status") == "ok"]
    max_ranks = max(r["ranks"] for r in records)
    fit_where = cfg.get("fit_where", {"ranks": [r for r in (1, 2) if r < max_ranks] or [1],
                                      "overlap-chunks": [1]})
    fit_set, held = mdl.split(records, fit_where)
    m = mdl.Model(cores).fit(fit_set)
    rows_fit, s_fit = mdl.validate(m, fit_set)
    rows_held, s_held = mdl.validate(m, held)
    out = {"model": m, "fit_where": fit_where, "rows_fit": rows_fit, "rows_held": rows_held,
           "summary_fit": s_fit, "summary_held": s_held, "plots": []}
    cl = cfg.get("cluster", {})
    preset_name = cl.get("preset", "h100")
    preset = dict(mdl.PRESETS[preset_name], **cl.get("overrides", {}))
    workload = dict(DEFAULT_WORKLOAD, **cl.get("workload", {}))
    ranks = cl.get("ranks", DEFAULT_RANKS)
    out["cluster"] = {"preset": preset_name, "params": preset, "workload": workload,
                      "gemm_tflops": cl.get("gemm_tflops"),
                      "rows": mdl.cluster_predict(workload, ranks, preset, cl.get("gemm_tflops"))}
    if out_dir:
        out["plots"] += plots.model_fit(rows_fit, rows_held, out_dir)
        title = (f"model, {preset_name} preset: {workload['T']} tokens/GPU, d={workload['d']}, h={workload['h']}, "
                 f"k={workload['k']}, {'bf16' if workload['wire_bytes'] == 2 else 'fp32'} wire, "
                 f"imbalance {workload['imbalance']}, "
                 + (f"GEMMs at {cl['gemm_tflops']} TFLOP/s" if cl.get("gemm_tflops") else "no GEMM rate given: communication only"))
        out["plots"] += plots.cluster(out["cluster"]["rows"], title, out_dir)
    return out


def fit_text(a):
    m = a["model"]
    lines = ["| parameter | fitted | standard error | unit |", "|---|---|---|---|"]
    for name, value, se, unit in m.fit_report:
        lines.append(f"| {name} | {value:.4g} | {se:.2g} | {unit} |")
    lines.append("")
    lines.append("| component | points | relative RMS residual |")
    lines.append("|---|---|---|")
    for comp, (rms, n) in m.fit_quality.items():
        lines.append(f"| {comp} | {n} | {100 * rms:.1f} % |")
    return "\n".join(lines)


def _pct(x):
    return f"{100 * x:.1f} %"


def write_report(path, grid, results, info, timing, cores, analysis, plot_paths, command_line):
    out_dir = os.path.dirname(path)
    rel = lambda p: os.path.relpath(p, out_dir)  # noqa: E731
    L = [f"# moe-ep scaling study: {grid.description or os.path.basename(grid.source)}", ""]
    L += [f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by `{command_line}`.", "",
          "Every figure is a median over the repeats (each repeat one `mpirun` of `moe-bench --json`, itself "
          "the median of its timed iterations, slowest rank); ranges are the min and max over the repeats. "
          "Step = forward + backward. Data: `results.csv`, `results.jsonl` (every repeat's full JSON).", ""]
    L += ["## Machine and software", "", "| | |", "|---|---|"]
    for k, label in (("cpu", "CPU"), ("cores", "cores available"), ("memory_gib", "memory (GiB)"),
                     ("os", "OS"), ("moe_ep_git", "moe-ep git"), ("openmpi", "OpenMPI"),
                     ("onednn", "oneDNN (libdnnl-dev)"), ("compiler", "compiler"), ("build_type", "build type"),
                     ("python", "Python"), ("load_average", "load average during the runs")):
        if k in info:
            L.append(f"| {label} | {info[k]} |")
    L.append(f"| MPI environment | {', '.join(f'{k}={v}' for k, v in info.get('mpi_environment', {}).items())} |")
    L += ["", f"Grid: `{grid.source}`, {len(grid.unique_points())} points × {grid.repeats} repeats. "
          f"This invocation ran {timing['ran']} new points in {timing['wall_s']:.0f} s"
          + (f" ({timing['failed']} failed)" if timing["failed"] else "") + f"; the points' own run times add up to {timing['points_s']:.0f} s.", ""]
    if grid.trace:
        L += ["Timelines: `traces/<key>.json`, the first repeat of each point (`moe-bench --trace`; open "
              "in <https://ui.perfetto.dev> or `chrome://tracing`). Keys are in `results.csv`.", ""]
    if cores and any(p.ranks > cores for p in grid.unique_points()):
        L += [f"Runs with more ranks than the {cores} cores share cores (oversubscribed): their compute "
              "slows by ranks/cores or more (the model fits how much, phi), which is what they show, not a "
              "property of the layer.", ""]
    for study, (kind, axes, points) in grid.points_by_study.items():
        L += [f"## Study `{study}` ({kind})", ""]
        vary = [a for a in axes if len({str(p.params.get(a)) for p in points}) > 1] or axes
        head = vary + ["step ms [min, max]", "fwd ms", "bwd ms", "exchanges fwd ms", "GEMMs ms",
                       "algbw GB/s", "load max/mean", "drop %", "tokens/s"]
        L += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for p in points:
            r = results.get(p.key)
            if r is None:
                L.append("| " + " | ".join(str(p.params.get(a)) for a in vary) + " | not run |" + " |" * (len(head) - len(vary) - 1))
                continue
            md, lo, hi = r["median"], r["min"], r["max"]
            drop = md["dropped_assignments"] / max(1, p.ranks * int(p.flags["tokens"]) * int(p.flags["top-k"]))
            L.append("| " + " | ".join(str(p.params.get(a)) for a in vary) +
                     f" | {md['step_ms']:.2f} [{lo['step_ms']:.2f}, {hi['step_ms']:.2f}] | {md['fwd_ms']:.2f} | "
                     f"{md['bwd_ms']:.2f} | {md['exchange_ms']:.2f} | {md['gemm_fwd_ms'] + md['gemm_bwd_ms']:.2f} | "
                     f"{md['algbw_gbs']:.2f} | {md['load_max_over_mean']:.2f} | {100 * drop:.1f} | "
                     f"{md['tokens_per_s']:.0f} |")
        L.append("")
        for pth in plot_paths.get(study, []):
            L += [f"![{os.path.basename(pth)}]({rel(pth)})", ""]
    for pth in plot_paths.get("_all", []):
        L += ["## Parallel efficiency", "", f"![{os.path.basename(pth)}]({rel(pth)})", ""]
    if analysis:
        a = analysis
        sf, sh = a["summary_fit"], a["summary_held"]
        L += ["## Performance model", "", mdl.__doc__.strip().split("\n\n")[1].replace("\n", "\n"), "",
              "(`apps/moe_study/model.py` states the model in full.)", "",
              f"Fitted on the points where {json.dumps(a['fit_where'])} ({sf['points']} points); "
              f"the other {sh['points']} points are held out.", "", fit_text(a), ""]
        L += [f"**Held-out error** of the step time: median {_pct(sh['median_abs_error'])}, "
              f"max {_pct(sh['max_abs_error'])}, RMS {_pct(sh['rms_error'])} over {sh['points']} points "
              f"(on the fitted points: median {_pct(sf['median_abs_error'])}, max {_pct(sf['max_abs_error'])}).", ""]
        L += ["Measured: `moe-bench`'s own step time (wall time less run-queue waits) where the run reports "
              "it, which the model is fitted and checked on; the wall time beside it for reference.", "",
              "| held-out point | measured (own) ms | wall ms | predicted ms | error |", "|---|---|---|---|---|"]
        labels = {p.key: f"{p.study}: {p.label()}" for p in grid.unique_points()}
        for r, meas, pred, err in a["rows_held"]:
            desc = labels.get(r["key"], r["key"])
            L.append(f"| {desc} | {meas:.2f} | {r['median']['step_ms']:.2f} | {pred:.2f} | {100 * err:+.1f} % |")
        L.append("")
        for pth in a["plots"][:1]:
            L += [f"![model_fit]({rel(pth)})", ""]
        c = a["cluster"]
        L += [f"### Prediction: {c['preset']} preset", "",
              "Link classes from public figures (" + ", ".join(f"{k} {v}" for k, v in c["params"].items()) + "); "
              "workload per GPU: " + ", ".join(f"{k}={v}" for k, v in c["workload"].items()) + "; " +
              (f"expert GEMMs at {c['gemm_tflops']} TFLOP/s." if c["gemm_tflops"] else
               "no GEMM rate given, so compute is left out (communication and element-wise work only)."), "",
              "| GPUs | nodes | intra-node exchange ms | inter-node ms | exchanges ms | GEMMs ms | element-wise ms | step ms | tokens/s per GPU |",
              "|---|---|---|---|---|---|---|---|---|"]
        for r in c["rows"]:
            L.append(f"| {r['P']} | {r['nodes']} | {1e3 * r['intra']:.2f} | {1e3 * r['inter']:.2f} | "
                     f"{1e3 * r['exchange']:.2f} | {1e3 * r['gemm']:.2f} | {1e3 * r['other']:.3f} | "
                     f"{1e3 * r['step']:.2f} | {r['tokens_per_s_per_rank']:.0f} |")
        L.append("")
        for pth in a["plots"][1:]:
            L += [f"![model_cluster]({rel(pth)})", ""]
    with open(path, "w") as f:
        f.write("\n".join(L) + "\n")

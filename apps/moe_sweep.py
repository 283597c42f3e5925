#!/usr/bin/python3
"""moe-sweep: scaling studies of the MoE layer with moe-bench.

Runs every point of a grid under mpirun (each point `repeats` times, moe-bench --json), keeps the
medians and the min/max, and writes into the study directory:

    results.jsonl   one record per point (every repeat's JSON); a rerun skips the points in it
    results.csv     one row per study point, medians and spread
    *.png, *.svg    weak/strong scaling with the ideal line, time per phase, exchange bandwidth
                    against message size, parallel efficiency, the model against measurements
    report.md       the above with the machine, the software and the performance model
    grid.json, machine.json

    moe-sweep --grid apps/sweeps/example.json --out study
    moe-sweep --out s2 --ranks 1,2 --tokens 512,1024 --link-gbps 1 --routing balanced --routing zipf:1.2
    moe-sweep --out s2            # resume (or redraw) the study in s2 with the grid saved there

Axis flags take comma-separated values and may repeat (--routing takes one value per flag, as
hot:E,P has a comma). --axis NAME=V1,V2 makes any moe-bench flag an axis, --set NAME=V fixes one.
"""
import argparse
import json
import os
import shlex
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from moe_study import grid as grid_mod  # noqa: E402
from moe_study import runner  # noqa: E402

AXES = [  # (command-line flag, grid key)
    ("ranks", "ranks"), ("experts", "experts"), ("experts-per-rank", "experts_per_rank"),
    ("tokens", "tokens"), ("global-tokens", "global_tokens"), ("top-k", "top-k"),
    ("capacity-factor", "capacity-factor"), ("exchange", "exchange"), ("chunks", "overlap-chunks"),
    ("wire", "wire"), ("link-gbps", "link-gbps"), ("link-latency-us", "link-latency-us"),
    ("routing", "routing"),
]


def _value(text):
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text, text)


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="moe-sweep", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--grid", help="grid file (JSON, see apps/moe_study/grid.py)")
    ap.add_argument("--out", required=True, help="study directory (created; resumed when it has results)")
    ap.add_argument("--bench", help="moe-bench executable (default: build/apps/moe-bench)")
    ap.add_argument("--mpirun", default="mpirun", help="MPI launcher (default: mpirun)")
    ap.add_argument("--repeats", type=int, help="runs per point (overrides the grid's)")
    ap.add_argument("--kind", default="sweep", help="kind of a flags-made study: weak, strong, message, ...")
    for flag, _ in AXES:
        ap.add_argument(f"--{flag}", action="append", metavar="V[,V...]")
    ap.add_argument("--axis", action="append", default=[], metavar="NAME=V[,V...]", help="any moe-bench flag as an axis")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=V", help="a fixed moe-bench flag")
    ap.add_argument("--no-run", action="store_true", help="only redraw plots and report from the results there")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--no-model", action="store_true", help="leave the performance model out of the report")
    ap.add_argument("--dry-run", action="store_true", help="print the mpirun commands and exit")
    return ap.parse_args(argv)


def build_grid(args):
    axes = {}
    for flag, key in AXES:
        for item in getattr(args, flag.replace("-", "_")) or []:
            parts = [item] if key == "routing" else item.split(",")
            axes.setdefault(key, []).extend(_value(v) for v in parts if v != "")
    for item in args.axis:
        name, _, values = item.partition("=")
        axes.setdefault(name.lstrip("-"), []).extend(_value(v) for v in values.split(","))
    fixed = {}
    for item in args.set:
        name, _, value = item.partition("=")
        fixed[name.lstrip("-")] = _value(value)
    saved = os.path.join(args.out, "grid.json")
    if args.grid:
        if axes or fixed:
            raise grid_mod.GridError("give either --grid or axis flags, not both")
        data = json.load(open(args.grid))
        source = args.grid
    elif axes or fixed:
        data = {"repeats": 3, "bench": fixed, "studies": [{"name": "sweep", "kind": args.kind, "axes": axes}]}
        source = "command line"
    elif os.path.exists(saved):
        data = json.load(open(saved))
        source = data.pop("_source", saved)
    else:
        raise grid_mod.GridError("nothing to run: give --grid FILE or axis flags (or --out a study directory)")
    if args.repeats:
        data["repeats"] = args.repeats
    g = grid_mod.Grid(data, source=source)
    return g, dict(data, _source=source)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    try:
        grid, data = build_grid(args)
    except (grid_mod.GridError, OSError, json.JSONDecodeError) as e:
        print(f"moe-sweep: {e}", file=sys.stderr)
        return 2
    bench = runner.find_bench(args.bench)
    if bench is None and not args.no_run:
        print("moe-sweep: moe-bench not found: build it (cmake --build build) or pass --bench", file=sys.stderr)
        return 2
    if args.dry_run:
        for p in grid.unique_points():
            print(shlex.join(runner.command(p, bench or "moe-bench", args.mpirun, grid.mpirun)))
        return 0
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "grid.json"), "w") as f:
        json.dump(data, f, indent=1)
    info = runner.machine_info(bench or "moe-bench", args.mpirun)
    machine_path = os.path.join(args.out, "machine.json")
    previous = json.load(open(machine_path)) if os.path.exists(machine_path) else {}

    started = time.time()
    ran = failed = 0
    load_before = os.getloadavg()[0]
    if not args.no_run:
        try:
            results, ran, failed = runner.run_grid(grid, args.out, bench, args.mpirun)
        except KeyboardInterrupt:
            print(f"\nmoe-sweep: interrupted; the points done are in {args.out}/results.jsonl and a rerun "
                  "with the same --out resumes from there", file=sys.stderr)
            return 130
    if ran:
        info["load_average"] = f"{load_before:.2f} at the start, {os.getloadavg()[0]:.2f} at the end (1-minute)"
    elif "load_average" in previous:
        info["load_average"] = previous["load_average"]
    with open(machine_path, "w") as f:
        json.dump(info, f, indent=1)
    results = runner.load_results(os.path.join(args.out, "results.jsonl"))
    keys = {p.key for p in grid.unique_points()}
    results = {k: v for k, v in results.items() if k in keys}
    timing = {"ran": ran, "failed": failed, "wall_s": time.time() - started,
              "points_s": sum(r["wall_s"] for r in results.values())}
    runner.write_csv(grid, results, os.path.join(args.out, "results.csv"))

    plot_paths, analysis = {}, None
    if not args.no_plots and results:
        from moe_study import plots  # matplotlib only when drawing
        for study, (kind, _, points) in grid.points_by_study.items():
            paths = []
            if kind in ("weak", "strong"):
                paths += plots.scaling(study, kind, points, results, args.out, info["cores"])
            if kind == "message":
                paths += plots.bandwidth(study, points, results, args.out)
            paths += plots.phases(study, points, results, args.out)
            plot_paths[study] = paths
        plot_paths["_all"] = plots.efficiency(grid, results, args.out, info["cores"])
    if not args.no_model and results:
        from moe_study import report as rep
        try:
            analysis = rep.analyse(grid, results, info["cores"], None if args.no_plots else args.out)
        except (ValueError, KeyError, ZeroDivisionError) as e:
            print(f"moe-sweep: no performance model: {e}", file=sys.stderr)
    from moe_study import report as rep
    command_line = "moe-sweep " + shlex.join(argv)
    rep.write_report(os.path.join(args.out, "report.md"), grid, results, info, timing, info["cores"],
                     analysis, plot_paths, command_line)
    if analysis:
        m, sh = analysis["model"], analysis["summary_held"]
        print("moe-sweep: model parameters (value ± standard error):", file=sys.stderr)
        for name, value, se, unit in m.fit_report:
            print(f"  {name:32s} {value:10.4g} ± {se:.2g} {unit}", file=sys.stderr)
        print(f"moe-sweep: model held-out error: median {100 * sh['median_abs_error']:.1f} %, max "
              f"{100 * sh['max_abs_error']:.1f} % over {sh['points']} points", file=sys.stderr)
    print(f"moe-sweep: {len(results)} of {len(keys)} points in {args.out}; report {os.path.join(args.out, 'report.md')}",
          file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Runs grid points under mpirun with repeats; keeps medians and spread; JSONL, CSV, resume."""
import csv
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time

# Figures kept per point: median, min and max over the repeats (each repeat is itself a median of
# moe-bench's --iters timed calls).
NUMERIC = ["step_ms", "fwd_ms", "bwd_ms", "gemm_fwd_ms", "gemm_bwd_ms", "gemm_gflops",
           "exchange_ms", "bwd_exchange_ms", "compute_ms", "raw_alltoallv_ms", "algbw_gbs",
           "busbw_gbs", "tokens_per_s", "layer_over_gemm", "load_max_over_mean",
           "rank_load_max_over_mean", "link_bytes_max", "dropped_assignments", "chunks",
           # less the run-queue waits (moe-bench: apps/run_queue.hpp); what the model fits
           "step_own_ms", "fwd_own_ms", "bwd_own_ms", "gemm_fwd_own_ms", "gemm_bwd_own_ms"]
PHASES = ["route", "permute", "exchange", "experts", "exchange_back", "combine"]


def mpi_environment():
    """What CTest's mpirun gets on this machine kind (cmake/MoeTesting.cmake), unless already set."""
    env = dict(os.environ)
    wanted = {"OMPI_MCA_rmaps_base_oversubscribe": "1",
              "OMPI_MCA_btl_vader_single_copy_mechanism": "none",
              "OMPI_MCA_mpi_yield_when_idle": "1"}
    if os.geteuid() == 0:
        wanted.update({"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"})
    for k, v in wanted.items():
        env.setdefault(k, v)
    return env


def command(point, bench, mpirun="mpirun", mpirun_args=()):
    from .grid import bench_arguments
    return [mpirun, "-np", str(point.ranks), *mpirun_args, bench, "--json",
            *bench_arguments(point.flags)]


def _flatten(result):
    row = {k: result.get(k) for k in NUMERIC if k in result}
    row["step_ms"] = result["fwd_ms"] + result["bwd_ms"]
    if "fwd_own_ms" in result:
        row["step_own_ms"] = result["fwd_own_ms"] + result["bwd_own_ms"]
    for pass_name in ("fwd", "bwd"):
        for ph in PHASES:
            row[f"{pass_name}.{ph}_ms"] = result.get(f"{pass_name}_phase_ms", {}).get(ph, 0.0)
    return row


def run_once(cmd, timeout):
    """One mpirun of moe-bench: (its --json object, None) or (None, why it failed)."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=mpi_environment())
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout} s"
    for line in reversed(proc.stdout.splitlines()):
        line = line.strip()
        if proc.returncode == 0 and line.startswith("{"):
            try:
                return json.loads(line), None
            except json.JSONDecodeError:
                pass
    tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-3:]
    return None, f"exit {proc.returncode}: " + " | ".join(tail)


def _summary(runs):
    flat = [_flatten(r) for r in runs]
    keys = flat[0].keys()
    return {stat: {k: fn([f[k] for f in flat]) for k in keys}
            for stat, fn in (("median", statistics.median), ("min", min), ("max", max))}


def summarize(point, cmd, runs, wall_s, trace_path):
    """The JSONL record of a point whose repeats all ran: medians, min and max, every run."""
    summary = _summary(runs)
    return {"key": point.key, "status": "ok", "study": point.study, "params": point.params,
            "ranks": point.ranks, "flags": point.flags, "command": cmd, "repeats": len(runs),
            "trace": trace_path,
            "wall_s": round(wall_s, 3), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **summary, "runs": runs}


def _failed(point, cmd, why, wall_s):
    return {"key": point.key, "status": "failed", "study": point.study, "params": point.params,
            "ranks": point.ranks, "flags": point.flags, "command": cmd, "error": why,
            "wall_s": round(wall_s, 3)}


def load_results(jsonl_path):
    """key -> the last ok record in the JSONL (a torn last line from an interrupted run is skipped)."""
    done = {}
    if not os.path.exists(jsonl_path):
        return done
    with open(jsonl_path) as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if rec.get("status") == "ok":
                if rec.get("runs") and set(_flatten(rec["runs"][0])) - set(rec["median"]):
                    rec.update(_summary(rec["runs"]))  # written before a figure was summarized
                done[rec["key"]] = rec
    return done


def append_record(jsonl_path, rec):
    # One write per record plus fsync: an interrupt leaves at most one torn line, which resume skips.
    with open(jsonl_path, "a") as f:
        f.write(json.dumps(rec, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _fmt_s(seconds):
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


def run_grid(grid, out_dir, bench, mpirun="mpirun", log=sys.stderr, timeout=600):
    """Runs every point not yet in out_dir/results.jsonl. Returns (results by key, new points run).

    Repeats are interleaved: the first repeat of every point, then the second of every point, and
    so on, so that a change in the machine's load (other jobs starting or ending) falls on every
    point alike rather than on the few that happen to run then. A point is written to the JSONL
    once its last repeat has run; an interrupted sweep reruns the points not yet written."""
    jsonl = os.path.join(out_dir, "results.jsonl")
    done = load_results(jsonl)
    points = grid.unique_points()
    todo = [p for p in points if p.key not in done]
    print(f"moe-sweep: {len(points)} points, {len(points) - len(todo)} already in {jsonl}, "
          f"{len(todo)} to run ({grid.repeats} repeats each, interleaved)", file=log, flush=True)
    if grid.trace:
        os.makedirs(os.path.join(out_dir, "traces"), exist_ok=True)
    started, ran, failed = time.time(), 0, 0
    runs = {p.key: [] for p in todo}
    walls = {p.key: 0.0 for p in todo}
    broken = set()
    total, count = len(todo) * grid.repeats, 0
    for repeat in range(grid.repeats):
        for i, point in enumerate(todo, 1):
            if point.key in broken:
                continue
            cmd = command(point, bench, mpirun, grid.mpirun)
            trace = os.path.join(out_dir, "traces", point.key + ".json") if grid.trace else None
            run_start = time.time()
            result, why = run_once(cmd + ["--trace", trace] if trace and repeat == 0 else cmd, timeout)
            walls[point.key] += time.time() - run_start
            count += 1
            if result is None:
                broken.add(point.key)
                append_record(jsonl, _failed(point, cmd, why, walls[point.key]))
                ran, failed = ran + 1, failed + 1
                what = "FAILED: " + why
            else:
                runs[point.key].append(result)
                what = f"step {result['fwd_ms'] + result['bwd_ms']:.2f} ms"
                if repeat == grid.repeats - 1:
                    rec = summarize(point, cmd, runs[point.key], walls[point.key], trace)
                    append_record(jsonl, rec)
                    done[point.key] = rec
                    ran += 1
                    m, lo, hi = rec["median"]["step_ms"], rec["min"]["step_ms"], rec["max"]["step_ms"]
                    what = f"step {m:.2f} ms [{lo:.2f}, {hi:.2f}]"
            elapsed = time.time() - started
            eta = elapsed / count * (total - count)
            print(f"[repeat {repeat + 1}/{grid.repeats}, {i}/{len(todo)}] {point.study}: {point.label()}  "
                  f"{what}  (elapsed {_fmt_s(elapsed)}, ETA {_fmt_s(eta)})", file=log, flush=True)
    return done, ran, failed


CSV_PARAMS = ["ranks", "tokens", "experts", "d-model", "d-hidden", "top-k", "capacity-factor",
              "exchange", "overlap-chunks", "wire", "link-gbps", "link-latency-us", "routing"]


def write_csv(grid, results, path):
    """One row per (study, point): the settings, then median/min/max of the figures."""
    extra = sorted({k for p in grid.unique_points() for k in p.flags} - set(CSV_PARAMS) - {"iters", "warmup"})
    figures = NUMERIC + [f"{ps}.{ph}_ms" for ps in ("fwd", "bwd") for ph in PHASES]
    header = ["study", "kind", "key"] + CSV_PARAMS + extra + ["repeats"]
    header += [f"{f}" for f in figures] + [f"{f}_min" for f in ("step_ms", "exchange_ms")] \
        + [f"{f}_max" for f in ("step_ms", "exchange_ms")]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for study, (kind, _, points) in grid.points_by_study.items():
            for p in points:
                rec = results.get(p.key)
                if rec is None:
                    continue
                row = [study, kind, p.key, p.ranks] + [p.flags.get(k, "") for k in CSV_PARAMS[1:]]
                row += [p.flags.get(k, "") for k in extra] + [rec["repeats"]]
                row += [rec["median"].get(k, "") for k in figures]
                row += [rec["min"][k] for k in ("step_ms", "exchange_ms")]
                row += [rec["max"][k] for k in ("step_ms", "exchange_ms")]
                w.writerow(row)


def _run_text(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""


def machine_info(bench, mpirun="mpirun", source_dir=None):
    info = {"hostname": platform.node(), "os": platform.platform(), "python": platform.python_version()}
    try:
        cpuinfo = open("/proc/cpuinfo").read()
        m = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
        info["cpu"] = m.group(1).strip() if m else platform.processor()
    except OSError:
        info["cpu"] = platform.processor()
    info["cores"] = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        m = re.search(r"^MemTotal:\s*(\d+) kB", open("/proc/meminfo").read(), re.M)
        info["memory_gib"] = round(int(m.group(1)) / 2**20, 1)
    except (OSError, AttributeError):
        pass
    src = source_dir or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    head = _run_text(["git", "-C", src, "rev-parse", "--short=12", "HEAD"]).strip()
    dirty = _run_text(["git", "-C", src, "status", "--porcelain", "--untracked-files=no"]).strip()
    info["moe_ep_git"] = (head + ("-dirty" if dirty else "")) or "unknown"
    first = (_run_text([mpirun, "--version"]).splitlines() or ["unknown"])[0]
    info["openmpi"] = first.strip()
    dnnl = _run_text(["dpkg-query", "-W", "-f", "${Version}", "libdnnl-dev"]).strip()
    info["onednn"] = dnnl or "unknown"
    compiler = "unknown"
    cache = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(bench))), "CMakeCache.txt")
    if os.path.exists(cache):
        m = re.search(r"^CMAKE_CXX_COMPILER:\w+=(.+)$", open(cache).read(), re.M)
        if m:
            compiler = (_run_text([m.group(1).strip(), "--version"]).splitlines() or [compiler])[0]
        m = re.search(r"^CMAKE_BUILD_TYPE:\w+=(.*)$", open(cache).read(), re.M)
        if m:
            info["build_type"] = m.group(1).strip()
    info["compiler"] = compiler
    info["moe_bench"] = os.path.abspath(bench)
    info["mpi_environment"] = {k: v for k, v in mpi_environment().items() if k.startswith("OMPI_MCA")}
    return info


def find_bench(explicit=None):
    if explicit:
        return explicit
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for cand in (os.path.join(here, "build", "apps", "moe-bench"), shutil.which("moe-bench")):
        if cand and os.path.exists(cand):
            return cand
    return None

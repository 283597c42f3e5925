#!/usr/bin/python3
"""CTest (label study): moe-sweep on a tiny grid, twice.

Checks that the study directory holds a well-formed JSONL (one ok record per point), CSV (one row
per study point, numeric figures), PNG and SVG plots, and a report that embeds existing plots and
states the machine; that each point kept its trace; that forced routing achieved what it asked (balanced 1.0, hot:0,0.5 2.0 with 4
experts); and that a second run resumes: it runs no new point and leaves the JSONL as it was.

    sweep_check.py SWEEP_SCRIPT MOE_BENCH GRID WORK_DIR
"""
import csv
import json
import os
import re
import shutil
import subprocess
import sys


def fail(message):
    print(f"FAIL: {message}")
    sys.exit(1)


def run(script, bench, grid, out):
    proc = subprocess.run([sys.executable, script, "--grid", grid, "--out", out, "--bench", bench],
                          capture_output=True, text=True, timeout=240)
    sys.stdout.write(proc.stderr)
    if proc.returncode != 0:
        fail(f"moe-sweep exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc.stderr


def main():
    script, bench, grid, work = sys.argv[1:5]
    out = os.path.join(work, "study")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(work, exist_ok=True)
    log = run(script, bench, grid, out)
    m = re.search(r"moe-sweep: (\d+) points, 0 already in .*, (\d+) to run", log)
    if not m or m.group(1) != m.group(2):
        fail("the first run did not start from an empty study")
    points = int(m.group(1))

    # JSONL: every line a JSON object, one ok record per point, distinct keys.
    jsonl = os.path.join(out, "results.jsonl")
    records = [json.loads(line) for line in open(jsonl)]
    if len(records) != points or len({r["key"] for r in records}) != points:
        fail(f"results.jsonl has {len(records)} records for {points} points")
    for r in records:
        if r["status"] != "ok" or r["median"]["step_ms"] <= 0 or not r["runs"]:
            fail(f"bad record {r['key']}: {r.get('error', r['status'])}")
        if not r["min"]["step_ms"] <= r["median"]["step_ms"] <= r["max"]["step_ms"]:
            fail(f"median outside [min, max] in {r['key']}")
        run0 = r["runs"][0]
        if run0["routing"] != r["flags"]["routing"] or "load_max_over_mean" not in run0:
            fail(f"moe-bench --json lacks routing/load_max_over_mean in {r['key']}")
        # The grid asks for a timeline per point: a trace-event file with one process per rank.
        trace = json.load(open(r["trace"]))
        processes = {e["pid"] for e in trace["traceEvents"] if e["name"] == "process_name"}
        if len(processes) != r["ranks"]:
            fail(f"trace of {r['key']} has {len(processes)} processes for {r['ranks']} ranks")
        expected = {"balanced": 1.0, "hot:0,0.5": 2.0}.get(run0["routing"])
        if expected is not None and abs(run0["load_max_over_mean"] - expected) > 1e-9:
            fail(f"routing {run0['routing']} gave load max/mean {run0['load_max_over_mean']}, not {expected}")

    # CSV: a header, one row per study point, numbers where numbers belong.
    rows = list(csv.DictReader(open(os.path.join(out, "results.csv"))))
    study_points = sum(len(s["axes"].get("ranks", [1])) * max(1, len(s["axes"].get("tokens", [1]))) *
                       len(s["axes"].get("routing", [1])) for s in json.load(open(grid))["studies"])
    if len(rows) != study_points:
        fail(f"results.csv has {len(rows)} rows, expected {study_points}")
    for row in rows:
        for col in ("ranks", "step_ms", "fwd_ms", "bwd_ms", "exchange_ms", "load_max_over_mean",
                    "step_ms_min", "step_ms_max", "fwd.experts_ms"):
            float(row[col])

    # Plots: PNG signature and a readable image; SVG next to each.
    pngs = [f for f in os.listdir(out) if f.endswith(".png")]
    for name in ("weak_scaling", "weak_phases", "message_bandwidth", "efficiency", "model_fit"):
        if f"{name}.png" not in pngs:
            fail(f"{name}.png missing (have {sorted(pngs)})")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.image
    for f in pngs:
        path = os.path.join(out, f)
        if open(path, "rb").read(8) != b"\x89PNG\r\n\x1a\n":
            fail(f"{f} is not a PNG")
        h, w = matplotlib.image.imread(path).shape[:2]
        if w < 300 or h < 200:
            fail(f"{f} is {w}x{h}")
        svg = path[:-4] + ".svg"
        if not os.path.exists(svg) or b"<svg" not in open(svg, "rb").read(2000):
            fail(f"{os.path.basename(svg)} missing or not SVG")

    # Report: the machine and software, every embedded image exists, the model section.
    report = open(os.path.join(out, "report.md")).read()
    for needle in ("## Machine and software", "| CPU |", "| OpenMPI |", "| oneDNN", "| compiler |",
                   "| moe-ep git |", "## Performance model", "Held-out error"):
        if needle not in report:
            fail(f"report.md lacks '{needle}'")
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    if len(images) < 5:
        fail(f"report.md embeds {len(images)} images")
    for img in images:
        if not os.path.exists(os.path.join(out, img)):
            fail(f"report.md embeds {img}, which does not exist")

    # Resume: a second run runs nothing and leaves the JSONL unchanged.
    before = open(jsonl, "rb").read()
    log = run(script, bench, grid, out)
    if not re.search(rf"moe-sweep: {points} points, {points} already in .*, 0 to run", log):
        fail("the second run did not skip every point")
    if open(jsonl, "rb").read() != before:
        fail("the second run changed results.jsonl")
    print(f"PASS: {points} points, resume ran none")


if __name__ == "__main__":
    main()

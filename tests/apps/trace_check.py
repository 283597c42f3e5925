#!/usr/bin/python3
"""CTest: the --trace file of moe-bench and moe-train on NP ranks.

Checks the Chrome trace-event format (an object with "traceEvents"; "X" complete events with
numeric ts and dur in microseconds, "M" metadata naming every process and thread), one process per
rank, every phase of a layer's forward and backward on the calling thread, each chunk's exchanges
on the communication thread (the bench runs 3 chunks), the training step's phases and the
gradient reduction, and per thread: events recorded in order of their end, nesting without partial
overlap. The clocks: on one host every rank reads the same clock, so each rank's estimated offset
must lie within its stated error, and the k-th exchange of every rank (one collective) must
overlap in time across the ranks. Last, a run with room for 5 events per thread must say how many
it dropped.

    trace_check.py MPIRUN NP MOE_BENCH MOE_TRAIN WORK_DIR
"""
import collections
import json
import os
import subprocess
import sys

CHUNKS = 3
PHASES = ["route", "permute", "exchange", "experts", "exchange_back", "combine"]
EXCHANGES = ["dispatch", "return", "backward: gradients to experts", "backward: gradients back"]
TOLERANCE_US = 0.01  # ts and dur are printed from integer nanoseconds; allow rounding


def fail(message):
    print(f"FAIL: {message}")
    sys.exit(1)


def run(command):
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        fail(f"{' '.join(command)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc.stderr


def load(path, ranks):
    """Parses the file and checks the trace-event format; returns the events of each thread,
    keyed by (rank, thread name, tid), in file order."""
    with open(path) as f:
        trace = json.load(f)
    if not isinstance(trace, dict) or not isinstance(trace.get("traceEvents"), list):
        fail("not a JSON object with a traceEvents list")
    process_names, thread_names = {}, {}
    threads = collections.defaultdict(list)
    for e in trace["traceEvents"]:
        if e.get("ph") not in ("X", "M") or not isinstance(e.get("pid"), int) or e["pid"] < 1:
            fail(f"event is neither X nor M, or has no pid >= 1: {e}")
        if e["ph"] == "M":
            if e["name"] == "process_name":
                process_names[e["pid"]] = e["args"]["name"]
            elif e["name"] == "thread_name":
                thread_names[(e["pid"], e["tid"])] = e["args"]["name"]
            elif e["name"] != "process_sort_index":
                fail(f"unexpected metadata event {e}")
            continue
        for key in ("ts", "dur"):
            if not isinstance(e.get(key), (int, float)) or e[key] < 0:
                fail(f"complete event without a non-negative {key}: {e}")
        if not isinstance(e.get("tid"), int) or not isinstance(e.get("name"), str) or not e.get("cat"):
            fail(f"complete event without tid, name or cat: {e}")
        threads[(e["pid"], e["tid"])].append(e)
    expected = {pid: f"rank {pid - 1}" for pid in range(1, ranks + 1)}
    if sorted(process_names) != sorted(expected):
        fail(f"processes {process_names}, expected one per rank {expected}")
    for pid, name in process_names.items():
        if not name.startswith(expected[pid] + " ("):
            fail(f"process {pid} is named {name!r}, expected {expected[pid]!r} and its host")
    by_thread = {}
    for (pid, tid), events in threads.items():
        if (pid, tid) not in thread_names:
            fail(f"thread {tid} of process {pid} has no thread_name")
        by_thread[(pid - 1, thread_names[(pid, tid)], tid)] = events
    return trace, by_thread


def check_nesting(key, events):
    ends = [e["ts"] + e["dur"] for e in events]
    if any(b < a - TOLERANCE_US for a, b in zip(ends, ends[1:])):
        fail(f"{key}: events not recorded in order of their end")
    stack = []
    for e in sorted(events, key=lambda e: (e["ts"], -e["dur"])):
        end = e["ts"] + e["dur"]
        while stack and e["ts"] >= stack[-1] - TOLERANCE_US:
            stack.pop()
        if stack and end > stack[-1] + TOLERANCE_US:
            fail(f"{key}: {e['cat']}/{e['name']} at {e['ts']} overlaps the end of its enclosing event")
        stack.append(end)


def names(events, category):
    return {e["name"] for e in events if e["cat"] == category}


def check_layer(by_thread, ranks, chunked):
    for rank in range(ranks):
        main = [ev for (r, name, _), ev in by_thread.items() if r == rank and name == "main"]
        if len(main) != 1:
            fail(f"rank {rank}: {len(main)} threads named main")
        for category in ("forward", "backward"):
            missing = set(PHASES) - names(main[0], category)
            if missing:
                fail(f"rank {rank}: {category} phases {sorted(missing)} are not in the trace")
        if not chunked:
            continue
        comm = [ev for (r, name, _), ev in by_thread.items() if r == rank and name == "communication"]
        if len(comm) != 1:
            fail(f"rank {rank}: {len(comm)} communication threads, expected 1 (chunks > 1)")
        for exchange in EXCHANGES:
            chunks = {e["args"]["chunk"] for e in comm[0] if e["name"] == exchange}
            if chunks != set(range(CHUNKS)):
                fail(f"rank {rank}: '{exchange}' exchanges of chunks {sorted(chunks)}, expected 0..{CHUNKS - 1}")
        computed = {e["args"]["chunk"] for e in main[0] if e["cat"] == "forward" and e["name"] == "experts"
                    and "args" in e}
        if computed != set(range(CHUNKS)):
            fail(f"rank {rank}: expert compute of chunks {sorted(computed)} on the calling thread")


def check_clocks(trace, by_thread, ranks):
    aligned = trace["otherData"]["ranks"]
    if [r["rank"] for r in aligned] != list(range(ranks)):
        fail(f"otherData.ranks lists {aligned}")
    error = {}
    for r in aligned:
        error[r["rank"]] = r["clock_offset_error_us"]
        # One host, one clock: the true offset is 0.
        if abs(r["clock_offset_us"]) > r["clock_offset_error_us"] + TOLERANCE_US:
            fail(f"rank {r['rank']}: offset {r['clock_offset_us']} us outside its error {r['clock_offset_error_us']} us")
    # The k-th dispatch of every rank is one collective: the ranks were inside it together.
    dispatches = {r: [e for (rank, name, _), ev in by_thread.items() if rank == r and name == "communication"
                      for e in ev if e["name"] == "dispatch"] for r in range(ranks)}
    slack = 2 * max(error.values()) + TOLERANCE_US
    for k in range(len(dispatches[0])):
        starts = [dispatches[r][k]["ts"] for r in range(ranks)]
        ends = [dispatches[r][k]["ts"] + dispatches[r][k]["dur"] for r in range(ranks)]
        if max(starts) > min(ends) + slack:
            fail(f"dispatch {k}: the ranks' intervals do not meet (starts {starts}, ends {ends})")


def main():
    mpirun, np, bench, train, work = sys.argv[1:6]
    ranks = int(np)
    os.makedirs(work, exist_ok=True)
    launch = [mpirun, "-np", np]
    small = ["--d-model", "64", "--d-hidden", "128", "--experts", str(2 * ranks)]

    bench_trace = os.path.join(work, "bench.json")
    log = run(launch + [bench, "--tokens", "256", "--iters", "2", "--warmup", "1",
                        "--overlap-chunks", str(CHUNKS), "--json", "--trace", bench_trace] + small)
    if f"trace {bench_trace}:" not in log or "dropped" in log:
        fail(f"moe-bench did not report its trace, or dropped events:\n{log}")
    trace, by_thread = load(bench_trace, ranks)
    for key, events in by_thread.items():
        check_nesting(key, events)
    check_layer(by_thread, ranks, chunked=True)
    check_clocks(trace, by_thread, ranks)
    print(f"moe-bench: {sum(len(e) for e in by_thread.values())} events, {len(by_thread)} threads: ok")

    train_trace = os.path.join(work, "train.json")
    run(launch + [train, "--steps", "2", "--batch", str(32 * ranks), "--log-every", "1",
                  "--eval-tokens", "64", "--baseline", "none", "--trace", train_trace] + small)
    trace, by_thread = load(train_trace, ranks)
    for key, events in by_thread.items():
        check_nesting(key, events)
    check_layer(by_thread, ranks, chunked=False)
    for (rank, name, _), events in by_thread.items():
        if name != "main":
            continue
        missing = {"data", "forward", "backward", "reduce gradients", "optimizer step"} - names(events, "step")
        if missing or "gradient reduction" not in names(events, "gradients"):
            fail(f"rank {rank}: training-step phases {sorted(missing)} or the gradient reduction missing")
    print(f"moe-train: {sum(len(e) for e in by_thread.values())} events: ok")

    small_trace = os.path.join(work, "overflow.json")
    log = run(launch + [bench, "--tokens", "64", "--iters", "1", "--warmup", "0", "--trace-events", "5",
                        "--trace", small_trace] + small)
    trace, by_thread = load(small_trace, ranks)
    dropped = sum(r["dropped_events"] for r in trace["otherData"]["ranks"])
    if dropped == 0 or f"dropped {dropped} events" not in log:
        fail(f"room for 5 events per thread: {dropped} dropped in the file; log:\n{log}")
    if any(len(events) > 5 for events in by_thread.values()):
        fail("a thread holds more events than --trace-events")
    print(f"overflow: {dropped} dropped and reported: ok")


if __name__ == "__main__":
    main()

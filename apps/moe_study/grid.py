"""A sweep grid: studies, each a Cartesian product of axes over fixed moe-bench flags.

Grid file (JSON):

    {"description": "...", "repeats": 3,
     "bench": {"iters": 5, "d-model": 256, ...},       # flags every point gets
     "mpirun": ["--bind-to", "none"],                  # extra mpirun arguments (optional)
     "trace": true,                                    # traces/<key>.json per point (optional)
     "studies": [{"name": "weak", "kind": "weak",
                  "axes": {"ranks": [1, 2, 4], "tokens": [1024], "experts_per_rank": [2]},
                  "bench": {...}}],                     # flags of this study only (optional)
     "model": {"fit_where": {"ranks": [1, 2], "overlap-chunks": [1]}}}

Keys are moe-bench flags without the dashes ("link-gbps": 2 -> --link-gbps 2), so any future
moe-bench flag (hosts, compute format, capacity scope, ...) is an axis with no code change; a
value true is a switch (--forward-only), false or null leaves the flag out. Three keys are not
flags: `ranks` (mpirun -np), `global_tokens` (--tokens = global_tokens / ranks, for strong
scaling) and `experts_per_rank` (--experts = experts_per_rank * ranks, for weak scaling).
Kinds (what the plots do with a study): weak, strong, message (bandwidth against message size),
and any other name (phases only).
"""
import hashlib
import itertools
import json

DERIVED = ("ranks", "global_tokens", "experts_per_rank")

# moe-bench's defaults, so that every row states every setting (and points that differ only in an
# explicit default share a key).
BENCH_DEFAULTS = {
    "tokens": 2048, "experts": 8, "d-model": 512, "d-hidden": 1024, "top-k": 2,
    "capacity-factor": 1.25, "activation": "gelu", "exchange": "variable", "overlap-chunks": 1,
    "wire": "fp32", "link-gbps": 0, "link-latency-us": 0, "routing": "learned",
    "iters": 20, "warmup": 3,
}


class GridError(ValueError):
    pass


def _as_list(name, value):
    if isinstance(value, list):
        if not value:
            raise GridError(f"axis '{name}' has no values")
        return value
    return [value]


def _canonical(value):
    """Numbers as the shortest text that reads back the same (2.0 -> 2), others as given."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def resolve(params):
    """Grid parameters -> (ranks, moe-bench flags dict) with the derived keys applied."""
    p = dict(params)
    ranks = int(p.pop("ranks", 1))
    if ranks < 1:
        raise GridError(f"ranks={ranks} must be >= 1")
    global_tokens = p.pop("global_tokens", None)
    experts_per_rank = p.pop("experts_per_rank", None)
    if global_tokens is not None:
        if int(global_tokens) % ranks:
            raise GridError(f"global_tokens={global_tokens} is not a multiple of ranks={ranks}")
        p["tokens"] = int(global_tokens) // ranks
    if experts_per_rank is not None:
        p["experts"] = int(experts_per_rank) * ranks
    flags = dict(BENCH_DEFAULTS)
    flags.update({k: _canonical(v) for k, v in p.items()})
    return ranks, flags


def point_key(ranks, flags):
    text = json.dumps({"ranks": ranks, "flags": flags}, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def bench_arguments(flags):
    args = []
    for name in sorted(flags):
        value = flags[name]
        if value is False or value is None:
            continue
        if value is True:
            args.append(f"--{name}")
        else:
            args += [f"--{name}", str(value)]
    return args


class Point:
    def __init__(self, study, kind, params, axes=()):
        self.study, self.kind, self.params, self.axes = study, kind, params, tuple(axes)
        self.ranks, self.flags = resolve(params)
        self.key = point_key(self.ranks, self.flags)

    def label(self):
        return " ".join(f"{k}={self.params[k]}" for k in (self.axes or self.params))


class Grid:
    def __init__(self, data, source="<flags>"):
        if not isinstance(data, dict):
            raise GridError(f"{source}: a grid is a JSON object")
        self.source = source
        self.description = data.get("description", "")
        self.repeats = int(data.get("repeats", 3))
        if self.repeats < 1:
            raise GridError(f"{source}: repeats must be >= 1")
        self.bench = dict(data.get("bench", {}))
        self.mpirun = list(data.get("mpirun", []))
        # Keep a Perfetto timeline (moe-bench --trace) of each point's first repeat.
        self.trace = bool(data.get("trace", False))
        self.model = dict(data.get("model", {}))
        self.studies = data.get("studies")
        if not self.studies:
            raise GridError(f"{source}: 'studies' is missing or empty")
        self.points_by_study = {}
        for i, study in enumerate(self.studies):
            name = study.get("name", f"study{i}")
            kind = study.get("kind", name)
            axes = study.get("axes", {})
            names = list(axes)
            values = [_as_list(n, axes[n]) for n in names]
            points = []
            for combo in itertools.product(*values):
                params = dict(self.bench)
                params.update(study.get("bench", {}))
                params.update(dict(zip(names, combo)))
                try:
                    points.append(Point(name, kind, params, names))
                except GridError as e:
                    raise GridError(f"{source}: study '{name}': {e}") from None
            self.points_by_study[name] = (kind, names, points)

    def unique_points(self):
        """Every distinct point once, in study order (a point two studies share runs once)."""
        seen, out = set(), []
        for _, _, points in self.points_by_study.values():
            for p in points:
                if p.key not in seen:
                    seen.add(p.key)
                    out.append(p)
        return out


def load_grid(path):
    try:
        with open(path) as f:
            data = json.load(f)
    except OSError as e:
        raise GridError(f"{path}: cannot read: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise GridError(f"{path}: not valid JSON: {e}") from None
    return Grid(data, source=path)


def grid_from_axes(axes, bench, repeats, kind="sweep"):
    """A one-study grid from command-line axes (name -> list of values)."""
    return Grid({"repeats": repeats, "bench": bench,
                 "studies": [{"name": "sweep", "kind": kind, "axes": axes}]})

"""A performance model of one MoE layer step (forward + backward), per rank.

    step = gemm + pipeline(exchanges, expert compute, chunks), forward and backward + other

  measured  every time the model fits or is checked against is moe-bench's own time (the wall
            time less the run-queue waits, apps/run_queue.hpp) when the run reported it. On a
            shared machine the wall time of compute follows the scheduler, not the work: one
            step's expert compute took the same CPU time with 1, 2 and 4 chunks and 3x the wall
            time with one chunk (one long burst, shared with other processes) as with four.
  gemm      expert GEMM flops of the busiest rank / GEMM rate R. Flops per step: 6 * n_mats * rows_max
            * d * h (forward 2 n_mats rows d h; backward twice that), n_mats = 2 (3 for swiglu),
            rows_max = T * k * kept_share * imbalance (imbalance = max/mean kept rows over ranks);
            with the padded exchange the experts compute every slot: E * capacity rows.
            With more ranks than cores the ranks share cores: the time scales by
            1 + phi * max(0, P / cores - 1), phi fitted (1 would be a fair share of the cores; more
            when waiting ranks also take CPU, as MPI's polling does), 1 on a GPU cluster.
  exchange  alpha-beta per operation and link class: one pass (forward or backward) makes two
            payload all-to-alls, each costing alpha + bytes / beta on the busiest rank's link, with
            bytes = max(sent, received) to other ranks = rows_max * (P-1)/P * d * wire_bytes. On a
            cluster a rank's peers are split into its node (G-1 of them, link class "intra") and
            other nodes (P-G, class "inter"), which move in parallel: the slower class counts.
  pipeline  with C chunks, a pass's exchange X (2 (alpha - lat + C lat) + bytes/beta, lat the link's
            own latency when known, else alpha: the wait for the slowest rank is paid once per
            pass, the latency per chunk) and compute K overlap as a two-stage pipeline:
            X/C + K/C + (C-1) * max(X/C, K/C). With C > 1 the exchanges run on the
            communication thread, which shares its rank's core with the compute: the first
            dispatch and the last return, the ones the compute cannot hide, wait for it to wake
            and for its peer's, nu per pass more than on the calling thread, fitted on the
            chunked training points (0 without any). Measured: chunked steps exceed the one-chunk
            step by about the same with 2 and 4 chunks, so this cost is per pass, not per chunk.
  other     router, permutations, activations, combine, and the small collectives (counts,
            statistics): g0 + gp [P > 1] + g1 * rows_max * (2d + h) (the last scaled by the
            oversubscription like the GEMMs), fitted on what is left of the measured step.

Calibration (least squares, numpy): R from moe-bench's GEMM floors, alpha and beta per link class
from its exchange times (points with one chunk, more than one rank; with one message size only,
or a slope lost in noise, beta is the simulated link's nominal one and alpha is fitted alone;
a simulated link's alpha and beta are its own latency and bandwidth, since its measured exchange
times also hold the waits for a peer that is late, on a shared machine mostly for a core), g
from the remainder (a negative coefficient is set to 0 and the others refitted). The bytes on the
busiest link are moe-bench's link_bytes_max when measured (padding of the padded exchange
included), else rows_max * (P-1)/P * d * wire bytes per exchange. Each
fitted parameter is printed with its standard error (sqrt of the diagonal of
sigma^2 (A^T A)^-1, sigma^2 = RSS / (n - p)).
"""
import math
import re

import numpy as np


def link_class(flags):
    gbps, lat = float(flags.get("link-gbps", 0) or 0), float(flags.get("link-latency-us", 0) or 0)
    if gbps == 0 and lat == 0:
        return "shm"
    return f"sim {gbps:g} GB/s {lat:g} us"


def features(rec, cores):
    """Model inputs of a measured record (settings and routing outcome, never its timings)."""
    f, med = rec["flags"], rec["median"]
    P, T, d, h, k = rec["ranks"], int(f["tokens"]), int(f["d-model"]), int(f["d-hidden"]), int(f["top-k"])
    n_mats = 3 if f.get("activation") == "swiglu" else 2
    dropped = med.get("dropped_assignments", 0) or 0
    kept_share = 1 - dropped / max(1, P * T * k)
    imbalance = med.get("rank_load_max_over_mean", 1.0) or 1.0
    wire_bytes = 2 if f.get("wire") == "bf16" else 4
    # The padded exchange gives every (source rank, local expert) pair a block of capacity slots,
    # and the experts compute every slot, padding included: E * slots rows on each rank.
    padded_rows = None
    cf = float(f.get("capacity-factor", 1.25))
    if f.get("exchange") == "padded" and cf > 0:
        E = int(f["experts"])
        slots = max(int(f.get("min-capacity", 4)), math.ceil(cf * T * k / E))
        padded_rows = E * slots
    return {
        "P": P, "T": T, "d": d, "h": h, "k": k, "n_mats": n_mats, "kept_share": kept_share,
        "imbalance": imbalance, "wire_bytes": wire_bytes, "chunks": int(med.get("chunks", 1) or 1),
        "excess": max(0.0, P / cores - 1.0), "link": link_class(f),
        # The bytes the plan put on the busiest link in one pass (padding included): an outcome of
        # the routing, known before any timing; the formula below is used when it is absent.
        "link_bytes": med.get("link_bytes_max"),
        "padded_rows": padded_rows,
    }


def measured(med, name):
    """A measured figure (ms) less the run-queue waits in it, when moe-bench reported that
    (`<name>_own_ms`, apps/run_queue.hpp), else its wall time. On a machine others share, the wall
    time of compute depends on how the scheduler shares the core, which depends on the pattern of
    the work (one long burst or a burst per chunk), not only on its amount: the own time does not."""
    own = med.get(name[:-3] + "_own_ms") if name.endswith("_ms") else None
    return own if own is not None else med[name]


def rows_max(x):
    """Rows the busiest rank's experts compute."""
    if x.get("padded_rows"):
        return x["padded_rows"]
    return x["T"] * x["k"] * x["kept_share"] * x["imbalance"]


def step_flops(x):
    return 6.0 * x["n_mats"] * rows_max(x) * x["d"] * x["h"]


def floor_flops(x):
    """Flops of moe-bench's GEMM floor: the kept rows only (no padding)."""
    return step_flops(dict(x, padded_rows=None))


def other_elements(x):
    """Elements the element-wise work touches: permute and combine (d per row), activation (h)."""
    return rows_max(x) * (2 * x["d"] + x["h"])


def _nominal_latency(cls):
    """The simulated link's own latency per operation (s), or None for a real link."""
    m = re.match(r"sim [0-9.e+-]+ GB/s ([0-9.e+-]+) us", cls)
    return float(m.group(1)) * 1e-6 if m else None


def _nominal_beta(cls):
    m = re.match(r"sim ([0-9.e+-]+) GB/s", cls)
    return float(m.group(1)) * 1e9 if m and float(m.group(1)) > 0 else None


def pass_link_bytes(x):
    """Bytes over the busiest rank's link in one pass (two exchanges)."""
    if x["P"] <= 1:
        return 0.0
    if x.get("link_bytes"):
        return float(x["link_bytes"])
    return 2.0 * rows_max(x) * (x["P"] - 1) / x["P"] * x["d"] * x["wire_bytes"]


def _lstsq(A, y, names):
    A, y = np.asarray(A, float), np.asarray(y, float)
    coef, *_ = np.linalg.lstsq(A, y, rcond=None)
    resid = y - A @ coef
    n, p = A.shape
    if n > p:
        sigma2 = float(resid @ resid) / (n - p)
        try:
            cov = sigma2 * np.linalg.inv(A.T @ A)
            se = np.sqrt(np.clip(np.diag(cov), 0, None))
        except np.linalg.LinAlgError:
            se = np.full(p, math.nan)
    else:
        se = np.full(p, math.nan)
    rel_rms = float(np.sqrt(np.mean((resid / np.where(y != 0, y, 1)) ** 2))) if n else math.nan
    return {nm: (float(c), float(s)) for nm, c, s in zip(names, coef, se)}, rel_rms, n


def _nonnegative_lstsq(A, y, names):
    """Least squares with every coefficient >= 0: drop the most negative one and refit."""
    active = list(range(len(names)))
    while True:
        p, rms, n = _lstsq([[row[i] for i in active] for row in A], y, [names[i] for i in active])
        negative = [names[i] for i in active if p[names[i]][0] < 0]
        if not negative or len(active) == 1:
            break
        worst = min(negative, key=lambda nm: p[nm][0])
        active.remove(names.index(worst))
    return {nm: p.get(nm, (0.0, math.nan)) for nm in names}, rms, n


def per_exchange_cost(link, chunks):
    """Fixed cost of one of a pass's two exchanges split into `chunks` operations.

    alpha, fitted on one-chunk runs, holds the link's latency and the wait for the slowest rank to
    arrive. Only the latency is paid again by each chunk: the chunks' operations queue on the
    communication thread behind each other, without the ranks meeting again in between. Where the
    latency is known (a simulated link's) the rest of alpha is paid once; otherwise all of alpha is
    taken as latency."""
    latency = link.get("latency")
    if latency is None or latency > link["alpha"]:
        return chunks * link["alpha"]
    return link["alpha"] - latency + chunks * latency


class Model:
    """Fitted parameters (SI units: seconds, bytes/s, flop/s) and how to predict with them."""

    def __init__(self, cores):
        self.cores = cores
        self.gemm_rate = None          # flop/s per rank
        self.phi = 1.0                 # slowdown per rank beyond the cores (oversubscription)
        self.links = {}                # class -> {"alpha": s, "beta": B/s}
        self.other = (0.0, 0.0, 0.0)   # g0 [s], gp [s when P > 1], g1 [s per element]
        self.thread_op = 0.0           # nu [s]: a chunked pass's extra fill and drain (communication thread)
        self.fit_report = []           # (name, value, stderr, unit) rows
        self.fit_quality = {}          # component -> (relative RMS residual, points)

    # --- calibration -------------------------------------------------------------------------
    def fit(self, records):
        xs = [(features(r, self.cores), r) for r in records]
        if not xs:
            raise ValueError("no points to fit the model on")
        # GEMM rate and oversubscription: t = flops (1 + phi * excess) / R, linear in 1/R and
        # phi/R. Without oversubscribed points phi is not measurable: a fair share (1) is assumed.
        y = [(measured(r["median"], "gemm_fwd_ms") + measured(r["median"], "gemm_bwd_ms")) / 1e3 for _, r in xs]
        if any(x["excess"] > 0 for x, _ in xs):
            A = [[floor_flops(x), floor_flops(x) * x["excess"]] for x, _ in xs]
            p, rms, n = _nonnegative_lstsq(A, y, ["inv_rate", "phi_inv_rate"])
            inv, se = p["inv_rate"]
            self.phi = p["phi_inv_rate"][0] / inv
            phi_se = p["phi_inv_rate"][1] / inv
        else:
            p, rms, n = _lstsq([[floor_flops(x)] for x, _ in xs], y, ["inv_rate"])
            inv, se = p["inv_rate"]
            self.phi, phi_se = 1.0, math.nan
        self.gemm_rate = 1 / inv
        self.fit_report.append(("GEMM rate R", self.gemm_rate / 1e9, se / inv**2 / 1e9, "GFLOP/s per core"))
        self.fit_report.append(("oversubscription phi", self.phi, phi_se,
                                "slowdown per rank beyond the cores, per core"))
        self.fit_quality["gemm"] = (rms, n)

        # Links: per class, t(pass exchanges) = 2 alpha + bytes / beta (forward and backward both).
        for cls in sorted({x["link"] for x, _ in xs}):
            if _nominal_beta(cls) and _nominal_latency(cls) is not None:
                # A simulated link is what its model says (comm/simulated_link.hpp): its latency
                # and bandwidth. Its measured exchange times also hold the waits for a peer that
                # is late, on a shared machine mostly for a core: that is left to the step's
                # own time and the fixed costs below, not taken as the link's.
                self.links[cls] = {"alpha": _nominal_latency(cls), "beta": _nominal_beta(cls),
                                   "latency": _nominal_latency(cls)}
                self.fit_report.append((f"alpha [{cls}]", _nominal_latency(cls) * 1e6, math.nan,
                                        "us per exchange (the simulated link's)"))
                self.fit_report.append((f"beta [{cls}]", _nominal_beta(cls) / 1e9, math.nan,
                                        "GB/s per direction (the simulated link's)"))
                continue
            rows, y = [], []
            for x, r in xs:
                if x["link"] != cls or x["P"] <= 1 or x["chunks"] != 1:
                    continue
                for key in ("exchange_ms", "bwd_exchange_ms"):
                    rows.append([2.0, pass_link_bytes(x)])
                    y.append(r["median"][key] / 1e3)
            if not rows:
                continue
            nominal = _nominal_beta(cls)
            p = None
            if len({round(a[1]) for a in rows}) >= 2:
                p, rms, n = _lstsq(rows, y, ["alpha", "inv_beta"])
                if p["inv_beta"][0] <= 0 or p["alpha"][0] < 0:
                    p = None  # noise swamped the size dependence: not a usable fit
            if p is not None:
                alpha, alpha_se = p["alpha"]
                inv_b, inv_b_se = p["inv_beta"]
                beta_se = inv_b_se / inv_b**2
                note = ""
            elif nominal:
                # One message size (or a meaningless slope): beta is the simulated link's own,
                # alpha is fitted alone.
                inv_b, beta_se = 1 / nominal, math.nan
                p, rms, n = _lstsq([[a[0]] for a in rows], [t - a[1] * inv_b for a, t in zip(rows, y)], ["alpha"])
                alpha, alpha_se = p["alpha"]
                note = " (beta fixed at the simulated link's)"
            else:
                continue
            self.links[cls] = {"alpha": alpha, "beta": 1 / inv_b, "latency": _nominal_latency(cls)}
            self.fit_report.append((f"alpha [{cls}]", alpha * 1e6, alpha_se * 1e6, "us per exchange" + note))
            self.fit_report.append((f"beta [{cls}]", 1 / inv_b / 1e9, beta_se / 1e9, "GB/s per direction"))
            self.fit_quality[f"exchange {cls}"] = (rms, n)

        # Other: the rest of the step, one chunk only (with chunks the parts overlap): a fixed
        # cost g0, the small collectives of a multi-rank step (count exchange, statistics; each
        # pays the link's latency) g_p, and g1 per element of the routed rows (permute, combine:
        # d each; activation: h).
        # Oversubscribed points are left out: their own time already lacks the waits for the
        # rank sharing the core, which the slowdown below would count again.
        A, y = [], []
        for x, r in xs:
            if x["chunks"] != 1 or (x["excess"] > 0 and any(z["excess"] == 0 for z, _ in xs)):
                continue
            m = r["median"]
            gemm = measured(m, "gemm_fwd_ms") + measured(m, "gemm_bwd_ms")
            if x["P"] > 1 and x["link"] in self.links:
                lk = self.links[x["link"]]
                exchanges = 2 * (2 * lk["alpha"] + pass_link_bytes(x) / lk["beta"]) * 1e3
            else:
                exchanges = m["exchange_ms"] + m["bwd_exchange_ms"]
            rest = measured(m, "step_ms") - gemm - exchanges
            A.append([1.0, 1.0 if x["P"] > 1 else 0.0, other_elements(x) * self.slowdown(x)])
            y.append(rest / 1e3)
        if len(A) >= 2:
            p, rms, n = _nonnegative_lstsq(A, y, ["g0", "gp", "g1"])
            self.other = (p["g0"][0], p["gp"][0], p["g1"][0])
            self.fit_report += [("other: fixed g0", p["g0"][0] * 1e3, p["g0"][1] * 1e3, "ms per step"),
                                ("other: multi-rank gp", p["gp"][0] * 1e3, p["gp"][1] * 1e3,
                                 "ms per step when P > 1"),
                                ("other: per row element g1", p["g1"][0] * 1e9, p["g1"][1] * 1e9,
                                 "ns per element of rows_max * (2d + h)")]
            self.fit_quality["other"] = (rms, n)
        self._fit_thread_op(xs)
        return self

    def _fit_thread_op(self, xs):
        """nu from the chunked training points, if any: the cost that makes each such point's
        predicted step its measured one (the prediction grows with lambda: bisection), median."""
        found = []
        for x, r in xs:
            if x["chunks"] <= 1 or x["P"] <= 1 or x["link"] not in self.links:
                continue
            target = measured(r["median"], "step_ms") / 1e3
            lo, hi = 0.0, 0.1
            self.thread_op = lo
            if self.predict(x)["step"] >= target:
                found.append(0.0)
                continue
            for _ in range(60):
                self.thread_op = 0.5 * (lo + hi)
                lo, hi = (self.thread_op, hi) if self.predict(x)["step"] < target else (lo, self.thread_op)
            found.append(0.5 * (lo + hi))
        self.thread_op = float(np.median(found)) if found else 0.0
        if found:
            spread = (max(found) - min(found)) / 2 if len(found) > 1 else math.nan
            self.fit_report.append(("chunked: fill and drain nu", self.thread_op * 1e3, spread * 1e3,
                                    f"ms per pass with chunks > 1 ({len(found)} chunked points)"))

    # --- prediction ---------------------------------------------------------------------------
    def slowdown(self, x):
        """How much slower compute runs when the ranks share cores (1 when they do not)."""
        return 1.0 + self.phi * x["excess"]

    def link_for(self, cls):
        if cls in self.links:
            return self.links[cls]
        raise KeyError(f"no fitted link class '{cls}' (fitted: {', '.join(self.links) or 'none'})")

    def predict(self, x, link=None):
        """Breakdown in seconds for one step: gemm, exchange, other, step (after overlap)."""
        gemm = step_flops(x) * self.slowdown(x) / self.gemm_rate
        g0, gp, g1 = self.other
        other = g0 + (gp if x["P"] > 1 else 0.0) + g1 * other_elements(x) * self.slowdown(x)
        C = x["chunks"]
        exch_total, step = 0.0, other
        for share in (1 / 3, 2 / 3):  # forward, backward GEMM shares
            K = gemm * share
            if x["P"] > 1:
                lk = link or self.link_for(x["link"])
                X = 2 * per_exchange_cost(lk, C) + pass_link_bytes(x) / lk["beta"]
                if C > 1:
                    step += self.thread_op
            else:
                X = 0.0
            exch_total += X
            a, b = X / C, K / C
            step += a + b + (C - 1) * max(a, b)
        return {"gemm": gemm, "exchange": exch_total, "other": other, "step": step}

    def predict_record(self, rec):
        return self.predict(features(rec, self.cores))


def validate(model, records):
    """(rows of key, measured ms, predicted ms, relative error) and summary errors."""
    rows = []
    for r in records:
        try:
            pred = model.predict_record(r)["step"] * 1e3
        except KeyError:
            continue
        meas = measured(r["median"], "step_ms")
        rows.append((r, meas, pred, (pred - meas) / meas))
    errs = np.array([abs(e) for *_, e in rows]) if rows else np.array([])
    summary = {"points": len(rows),
               "median_abs_error": float(np.median(errs)) if len(errs) else math.nan,
               "max_abs_error": float(np.max(errs)) if len(errs) else math.nan,
               "rms_error": float(np.sqrt(np.mean(errs ** 2))) if len(errs) else math.nan}
    return rows, summary


def matches(rec, where):
    """True when the record's settings are among `where`'s values for every key given."""
    for key, allowed in where.items():
        allowed = allowed if isinstance(allowed, list) else [allowed]
        value = rec["ranks"] if key == "ranks" else rec["flags"].get(key, rec["params"].get(key))
        if key == "overlap-chunks":
            value = int(value)
        if value not in allowed and str(value) not in [str(a) for a in allowed]:
            return False
    return True


def split(records, fit_where):
    fit = [r for r in records if matches(r, fit_where)]
    held = [r for r in records if not matches(r, fit_where)]
    return fit, held


# --- clusters: link classes from public figures ---------------------------------------------

PRESETS = {
    # H100 SXM: NVLink 4 ~900 GB/s per GPU bidirectional, all-to-all ~150 GB/s per direction in
    # practice inside a node; 8 x 400 Gb/s InfiniBand NDR per node, 50 GB/s per GPU and direction.
    # Latencies: typical NCCL all-to-all start-up costs (assumed, not measured here).
    "h100": {"gpus_per_node": 8, "intra_gbps": 150.0, "inter_gbps": 50.0,
             "intra_alpha_us": 10.0, "inter_alpha_us": 25.0, "hbm_gbps": 3000.0},
}


def cluster_predict(workload, ranks, preset, gemm_tflops=None):
    """Breakdown (seconds) of one step on a cluster for each rank count, one GPU per rank.

    workload: T (tokens per rank), d, h, k, experts_per_rank, capacity-free kept_share,
    imbalance, wire_bytes, n_mats, chunks. Compute (GEMMs) only when gemm_tflops is given; the
    element-wise rest is memory traffic at the preset's HBM bandwidth.
    """
    out = []
    G = preset["gpus_per_node"]
    for P in ranks:
        x = dict(workload, P=P, excess=0.0)
        rows = rows_max(x)
        peer_bytes = rows * x["d"] * x["wire_bytes"] / P  # to each other rank, per exchange
        intra_peers, inter_peers = min(G, P) - 1, max(0, P - G)
        t_intra = preset["intra_alpha_us"] * 1e-6 + intra_peers * peer_bytes / (preset["intra_gbps"] * 1e9) if intra_peers else 0.0
        t_inter = preset["inter_alpha_us"] * 1e-6 + inter_peers * peer_bytes / (preset["inter_gbps"] * 1e9) if inter_peers else 0.0
        per_exchange = max(t_intra, t_inter)
        gemm = step_flops(x) / (gemm_tflops * 1e12) if gemm_tflops else 0.0
        # Element-wise passes (permute, combine, activation, their backwards): about 6 reads and
        # writes of the routed rows and 4 of the hidden activations, fp32.
        other = (6 * rows * x["d"] * 4 + 4 * rows * x["h"] * 4) / (preset["hbm_gbps"] * 1e9)
        C = x.get("chunks", 1)
        step, exch = other, 0.0
        for share in (1 / 3, 2 / 3):
            X = 2 * per_exchange + 2 * (C - 1) * max(preset["intra_alpha_us"], preset["inter_alpha_us"] if inter_peers else 0) * 1e-6
            exch += X
            K = gemm * share
            a, b = X / C, K / C
            step += a + b + (C - 1) * max(a, b)
        out.append({"P": P, "nodes": max(1, math.ceil(P / G)), "intra": 4 * t_intra, "inter": 4 * t_inter,
                    "exchange": exch, "gemm": gemm, "other": other, "step": step,
                    "tokens_per_s_per_rank": x["T"] / step})
    return out

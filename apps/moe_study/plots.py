"""Plots of a sweep (matplotlib, Agg backend), each written as PNG and SVG."""
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .runner import PHASES  # noqa: E402

PHASE_COLORS = {"route": "#8c564b", "permute": "#9467bd", "exchange": "#1f77b4",
                "experts": "#2ca02c", "exchange_back": "#17becf", "combine": "#ff7f0e",
                "unaccounted": "#c7c7c7"}


def _save(fig, out_dir, name):
    fig.tight_layout()
    paths = []
    for ext in ("png", "svg"):
        path = os.path.join(out_dir, f"{name}.{ext}")
        fig.savefig(path, dpi=130)
        paths.append(path)
    plt.close(fig)
    return paths[0]


def _series(points, results, vary):
    """Groups a study's points by every setting except `vary` and ranks: label -> [(point, rec)]."""
    groups = {}
    for p in points:
        rec = results.get(p.key)
        if rec is None:
            continue
        label = ", ".join(f"{k}={v}" for k, v in p.params.items() if k not in (vary, "ranks")
                          and k in _varying_keys(points))
        groups.setdefault(label, []).append((p, rec))
    for g in groups.values():
        g.sort(key=lambda pr: pr[0].ranks)
    return groups


def _varying_keys(points):
    keys = set()
    for k in {k for p in points for k in p.params}:
        if len({str(p.params.get(k)) for p in points}) > 1:
            keys.add(k)
    return keys


def _describe(points):
    """The settings every point of the study shares, for a subtitle."""
    if not points:
        return ""
    f = points[0].flags
    same = lambda k: len({str(p.flags.get(k)) for p in points}) == 1  # noqa: E731
    parts = []
    for k, fmt in (("d-model", "d={}"), ("d-hidden", "h={}"), ("top-k", "k={}"), ("wire", "{} wire"),
                   ("capacity-factor", "cf={}"), ("routing", "routing {}")):
        if same(k):
            parts.append(fmt.format(f[k]))
    if same("link-gbps") and same("link-latency-us"):
        parts.append("no simulated link" if not f["link-gbps"] and not f["link-latency-us"]
                     else f"link {f['link-gbps']} GB/s + {f['link-latency-us']} us")
    return ", ".join(parts)


def scaling(study, kind, points, results, out_dir, cores):
    """Step time against ranks with the ideal line, and parallel efficiency."""
    groups = _series(points, results, "ranks")
    if not groups:
        return []
    fig, (ax, ax_eff) = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, prs in groups.items():
        ranks = [p.ranks for p, _ in prs]
        med = [r["median"]["step_ms"] for _, r in prs]
        lo = [m - r["min"]["step_ms"] for m, (_, r) in zip(med, prs)]
        hi = [r["max"]["step_ms"] - m for m, (_, r) in zip(med, prs)]
        line = ax.errorbar(ranks, med, yerr=[lo, hi], marker="o", capsize=3,
                           label=f"measured {label}".strip() + " (median, min-max)")
        base_p, base_t = ranks[0], med[0]
        ideal = [base_t if kind == "weak" else base_t * base_p / r for r in ranks]
        ideal_text = "flat" if kind == "weak" else f"T({base_p})·{base_p}/P"
        ax.plot(ranks, ideal, "--", color=line[0].get_color(), alpha=0.6, label=f"ideal {label} ({ideal_text})".replace("  ", " "))
        eff = [(base_t / t if kind == "weak" else base_t * base_p / (t * r)) for r, t in zip(ranks, med)]
        ax_eff.plot(ranks, [100 * e for e in eff], marker="o", label=label or "measured")
    all_ranks = sorted({p.ranks for p in points})
    for a in (ax, ax_eff):
        a.set_xscale("log", base=2)
        a.set_xticks(all_ranks)
        a.set_xticklabels([str(r) for r in all_ranks])
        a.set_xlabel("ranks (expert-parallel size P)")
        over = [r for r in all_ranks if r > cores]
        if over:
            below = max([r for r in all_ranks if r <= cores] or [cores])
            a.axvspan((below * over[0]) ** 0.5, max(all_ranks) * 1.3, color="0.92", zorder=0,
                      label=f"more ranks than the {cores} cores")
    if kind == "strong":
        ax.set_yscale("log")
    ax.set_ylabel("step time, forward + backward (ms)")
    what = "tokens per rank fixed" if kind == "weak" else "total tokens fixed"
    ax.set_title(f"{kind} scaling ({what}): step time")
    ax.legend(fontsize=7)
    ax_eff.set_ylabel("parallel efficiency (%)")
    ax_eff.set_ylim(0, 110)
    ax_eff.axhline(100, color="k", lw=0.8, ls="--")
    ax_eff.set_title(f"{kind} scaling: parallel efficiency")
    ax_eff.legend(fontsize=7)
    fig.suptitle(_describe(points), fontsize=9, y=0.995)
    return [_save(fig, out_dir, f"{study}_scaling")]


def phases(study, points, results, out_dir):
    """Forward + backward time per phase, stacked, one bar per point."""
    prs = [(p, results[p.key]) for p in points if p.key in results]
    if not prs:
        return []
    vary = sorted(_varying_keys(points)) or ["ranks"]
    labels = ["\n".join(f"{k}={p.params.get(k, p.ranks if k == 'ranks' else '')}" for k in vary) for p, _ in prs]
    fig, ax = plt.subplots(figsize=(max(7.5, 1.75 * len(prs) + 3.5), 4.8))
    bottom = [0.0] * len(prs)
    for ph in PHASES + ["unaccounted"]:
        if ph == "unaccounted":
            vals = [max(0.0, r["median"]["step_ms"] - b) for (_, r), b in zip(prs, bottom)]
        else:
            vals = [r["median"][f"fwd.{ph}_ms"] + r["median"][f"bwd.{ph}_ms"] for _, r in prs]
        ax.bar(range(len(prs)), vals, bottom=bottom, color=PHASE_COLORS[ph], label=ph.replace("_", " "))
        bottom = [b + v for b, v in zip(bottom, vals)]
    steps = [r["median"]["step_ms"] for _, r in prs]
    ax.hlines(steps, [i - 0.4 for i in range(len(prs))], [i + 0.4 for i in range(len(prs))], color="k",
              lw=2, zorder=3, label="measured step (each phase is\nthe slowest rank's, so the\nphases may add up to more)")
    ax.set_xticks(range(len(prs)))
    ax.set_xticklabels(labels, fontsize=7)
    ax.set_ylabel("time per step, forward + backward (ms)")
    ax.set_title(f"{study}: time per phase (medians, slowest rank per phase)\n{_describe(points)}", fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return [_save(fig, out_dir, f"{study}_phases")]


def bandwidth(study, points, results, out_dir):
    """Exchange algbw and busbw against the message size (bytes one rank sends per exchange)."""
    groups = {}
    for p in points:
        rec = results.get(p.key)
        if rec is None or p.ranks < 2:
            continue
        groups.setdefault(p.ranks, []).append((p, rec))
    if not groups:
        return []
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    nominal = set()
    for ranks, prs in sorted(groups.items()):
        prs.sort(key=lambda pr: pr[1]["median"]["link_bytes_max"])
        size = [r["median"]["link_bytes_max"] / 2 for _, r in prs]  # one exchange of the two
        line, = ax.plot(size, [r["median"]["algbw_gbs"] for _, r in prs], marker="o", label=f"algbw, P={ranks}")
        ax.plot(size, [r["median"]["busbw_gbs"] for _, r in prs], marker="s", ls="--",
                color=line.get_color(), label=f"busbw, P={ranks}")
        # What the busiest rank's link carried per second: comparable with a simulated link's rate.
        ax.plot(size, [r["median"]["link_bytes_max"] / (r["median"]["exchange_ms"] / 1e3) / 1e9 for _, r in prs],
                marker="^", ls=":", color=line.get_color(), label=f"busiest link's bytes / time, P={ranks}")
        nominal |= {float(p.flags["link-gbps"]) for p, _ in prs if float(p.flags["link-gbps"]) > 0}
    for g in sorted(nominal):
        ax.axhline(g, color="k", lw=0.8, ls=":", label=f"simulated link {g:g} GB/s")
    ax.set_xscale("log")
    ax.set_xlabel("message size: bytes the busiest rank moves per exchange (B)")
    ax.set_ylabel("bandwidth (GB/s, 10^9 B/s)")
    ax.set_title(f"{study}: bandwidth of one forward's exchanges against message size\n{_describe(points)}", fontsize=10)
    ax.text(0.01, 0.99, "algbw: bytes sent + received (own rows included) / time; busbw = algbw (P-1)/P",
            transform=ax.transAxes, fontsize=7, va="top")
    ax.legend(fontsize=8)
    return [_save(fig, out_dir, f"{study}_bandwidth")]


def efficiency(grid, results, out_dir, cores):
    """Parallel efficiency of every weak and strong study together."""
    fig, ax = plt.subplots(figsize=(7, 4.3))
    drawn = False
    for study, (kind, _, points) in grid.points_by_study.items():
        if kind not in ("weak", "strong"):
            continue
        for label, prs in _series(points, results, "ranks").items():
            ranks = [p.ranks for p, _ in prs]
            med = [r["median"]["step_ms"] for _, r in prs]
            eff = [(med[0] / t if kind == "weak" else med[0] * ranks[0] / (t * p)) for p, t in zip(ranks, med)]
            name = study if study == kind else f"{study} ({kind})"
            ax.plot(ranks, [100 * e for e in eff], marker="o", label=f"{name} {label}".strip())
            drawn = True
    if not drawn:
        plt.close(fig)
        return []
    ax.axhline(100, color="k", lw=0.8, ls="--", label="ideal")
    ax.set_xscale("log", base=2)
    ranks = sorted({p.ranks for _, (_, _, pts) in grid.points_by_study.items() for p in pts})
    ax.set_xticks(ranks)
    ax.set_xticklabels([str(r) for r in ranks])
    over = [r for r in ranks if r > cores]
    if over:
        below = max([r for r in ranks if r <= cores] or [cores])
        ax.axvspan((below * over[0]) ** 0.5, max(ranks) * 1.3, color="0.92", zorder=0,
                   label=f"more ranks than the {cores} cores")
    ax.set_ylim(0, 110)
    ax.set_xlabel("ranks (expert-parallel size P)")
    ax.set_ylabel("parallel efficiency (%)")
    ax.set_title("parallel efficiency: weak T(1)/T(P), strong T(1)/(P·T(P))")
    ax.legend(fontsize=7)
    return [_save(fig, out_dir, "efficiency")]


def model_fit(rows_fit, rows_held, out_dir):
    """Predicted against measured step time; fitted points and held-out points."""
    fig, ax = plt.subplots(figsize=(5.8, 5.2))
    allv = []
    for rows, marker, label in ((rows_fit, "o", "fitted on"), (rows_held, "^", "held out")):
        if rows:
            m = [r[1] for r in rows]
            p = [r[2] for r in rows]
            allv += m + p
            # Above the ±15 % band, which is drawn later and would hide the points inside it.
            ax.scatter(m, p, marker=marker, label=f"{label} ({len(rows)})", alpha=0.8, zorder=3)
    if not allv:
        plt.close(fig)
        return []
    lo, hi = min(allv) * 0.8, max(allv) * 1.2
    ax.plot([lo, hi], [lo, hi], "k-", lw=0.8, label="predicted = measured")
    ax.fill_between([lo, hi], [lo * 0.85, hi * 0.85], [lo * 1.15, hi * 1.15], color="0.9", label="±15 %")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("measured step time (ms; own time: less run-queue waits)")
    ax.set_ylabel("model's step time (ms)")
    ax.set_title("performance model: predicted against measured")
    ax.legend(fontsize=8)
    return [_save(fig, out_dir, "model_fit")]


def cluster(rows, title, out_dir, name="model_cluster"):
    """Predicted step breakdown on a cluster, stacked, per rank count."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    xs = range(len(rows))
    parts = [("gemm", "expert GEMMs", "#2ca02c"), ("exchange", "exchanges (not hidden)", "#1f77b4"),
             ("other", "element-wise (HBM)", "#ff7f0e")]
    bottom = [0.0] * len(rows)
    for key, label, color in parts:
        vals = [1e3 * r[key] for r in rows]
        if key == "exchange":
            # What the pipeline did not hide: the step minus the other parts.
            vals = [1e3 * (r["step"] - r["gemm"] - r["other"]) for r in rows]
        ax.bar(xs, vals, bottom=bottom, color=color, label=label)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_xticks(list(xs))
    ax.set_xticklabels([f"{r['P']}\n({r['nodes']} node{'s' if r['nodes'] > 1 else ''})" for r in rows], fontsize=8)
    ax.set_xlabel("GPUs (ranks)")
    ax.set_ylabel("predicted step time, forward + backward (ms)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    return [_save(fig, out_dir, name)]

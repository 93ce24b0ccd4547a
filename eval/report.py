"""The report in RESULTS: ``metrics.json``, ``report.md`` (our row beside the published GOHA table), per-video
and per-sample CSVs, and PNG plots (per-frame curves of each video, metric distributions)."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .data import natural_key
from .metrics import MetricResult
from .protocols.pairs import SampleSet
from .protocols.published import CITATION, TABLES

__all__ = ["NOT_COMPARABLE", "format_value", "write_report"]

NOT_COMPARABLE = "NOT COMPARABLE"
ARROW = {True: "↑", False: "↓"}
_DECIMALS = {"psnr": 2, "fid": 2, "akd": 3}


def format_value(metric: str, value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if math.isinf(value):
        return "inf"
    return f"{value:.{_DECIMALS.get(metric, 4 if metric in ('aed', 'apd') else 3)}f}"


def _json_safe(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_json_safe(v) for v in x]
    return x


def _plots(out: Path, sset: SampleSet, results: dict[str, MetricResult]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plot_dir = out / "plots"
    plot_dir.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    per_frame = {n: r for n, r in results.items() if r.aggregation == "mean"}
    if not per_frame:
        return written
    by_id = {s.id: s for s in sset.samples}
    # distributions
    fig, axes = plt.subplots(1, len(per_frame), figsize=(3.2 * len(per_frame), 2.8), squeeze=False)
    for ax, (name, r) in zip(axes[0], per_frame.items(), strict=True):
        vals = [v for v in r.values.tolist() if math.isfinite(v)]
        lo, hi = (min(vals), max(vals)) if vals else (0.0, 1.0)
        if hi - lo < 1e-6 * max(1.0, abs(hi)):  # (nearly) one value: a single bar around it
            lo, hi = lo - 0.5, hi + 0.5
        ax.hist(vals, bins=min(50, max(5, len(vals) // 4)), range=(lo, hi), color="tab:blue")
        ax.set_title(f"{name} {ARROW[r.higher_is_better]} (n={r.count})")
    fig.tight_layout()
    fig.savefig(plot_dir / "distributions.png", dpi=90)
    plt.close(fig)
    written.append("plots/distributions.png")
    # per-frame curves of each video (groups with several frames)
    groups: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for name, r in per_frame.items():
        for sid, v in r.per_sample().items():
            s = by_id[str(sid)]
            groups.setdefault(s.group, {}).setdefault(name, []).append((s.frame, v))
    for group in sorted(groups, key=natural_key):
        curves = groups[group]
        if max(len(c) for c in curves.values()) < 2:
            continue
        fig, axes = plt.subplots(len(curves), 1, figsize=(8, 1.8 * len(curves)), sharex=True, squeeze=False)
        for ax, (name, pts) in zip(axes[:, 0], curves.items(), strict=True):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=0.8)
            ax.set_ylabel(name)
        axes[-1, 0].set_xlabel("frame")
        axes[0, 0].set_title(group)
        fig.tight_layout()
        name = f"plots/frames_{group}.png"
        fig.savefig(out / name, dpi=80)
        plt.close(fig)
        written.append(name)
    return written


def write_report(out: str | Path, sset: SampleSet, results: dict[str, MetricResult], *,
                 run_options: dict[str, Any], notes: Sequence[str] = (), method: str = "ours",
                 elapsed_s: float | None = None, cache_stats: dict[str, Any] | None = None,
                 plots: bool = True) -> dict[str, Any]:
    """Write the report files into ``out`` and return the ``metrics.json`` content (plus file paths)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    protocol = sset.protocol
    comparable = all(r.comparable for r in results.values())
    all_notes = list(dict.fromkeys([*notes, *protocol.notes, *(n for r in results.values() for n in r.notes)]))
    if len(sset.samples) != protocol.published_count:
        all_notes.append(f"{len(sset.samples)} samples scored; the published protocol has {protocol.published_count}")
    if not comparable:
        all_notes.insert(0, f"{NOT_COMPARABLE}: at least one metric ran with random or unofficial networks")
    group_of = {s.id: s.group for s in sset.samples}
    per_video = {name: {str(g): v for g, v in r.breakdown(lambda sid: group_of[str(sid)]).items()}
                 for name, r in results.items() if r.aggregation == "mean"}
    summary: dict[str, Any] = {
        "benchmark": protocol.benchmark, "protocol": protocol.name, "method": method,
        "comparable": comparable, "stamp": None if comparable else NOT_COMPARABLE,
        "samples": len(sset.samples), "groups": len(sset.groups), "published_count": protocol.published_count,
        "metrics": {n: r.to_dict() for n, r in results.items()},
        "references": {n: protocol.reference_of(n) for n in results},
        "per_video": per_video, "options": run_options, "notes": all_notes,
        "published_table": protocol.table, "elapsed_s": elapsed_s, "cache": cache_stats or {},
    }
    (out / "metrics.json").write_text(json.dumps(_json_safe(summary), indent=1, default=str))

    # per-sample and per-video CSVs
    names = list(results)
    per_sample = {n: r.per_sample() for n, r in results.items() if r.aggregation == "mean"}
    excl = {n: r.exclusions for n, r in results.items()}
    with open(out / "per_sample.csv", "w", newline="") as f:
        w = csv.writer(f)
        cols = [n for n in names if n in per_sample]
        w.writerow(["id", "group", *cols])
        for s in sset.samples:
            w.writerow([s.id, s.group, *[per_sample[n].get(s.id, f"excluded: {excl[n].get(s.id, '')}")
                                         for n in cols]])
    with open(out / "per_video.csv", "w", newline="") as f:
        w = csv.writer(f)
        cols = list(per_video)
        w.writerow(["group", *[f"{n}_{k}" for n in cols for k in ("mean", "count", "excluded")]])
        for g in sset.groups:
            w.writerow([g, *[per_video[n].get(g, {}).get(k) for n in cols for k in ("mean", "count", "excluded")]])

    plot_files = _plots(out, sset, results) if plots else []

    # Markdown
    table = TABLES[protocol.table]
    stamp = "" if comparable else f" — **{NOT_COMPARABLE}**"
    lines = [f"# {protocol.description}{stamp}", ""]
    if not comparable:
        lines += [f"> **{NOT_COMPARABLE}**: networks ran with random or unofficial weights; these numbers must not "
                  "be put beside published ones.", ""]
    lines += [f"Method: `{method}` · protocol `{protocol.key}` · {len(sset.samples)} samples in {len(sset.groups)} "
              f"groups (published: {protocol.published_count:,})", ""]
    cols = [m for m in table.metrics if m in results] + [m for m in results if m not in table.metrics]
    header = "| Method | " + " | ".join(f"{m.upper()} {ARROW[results[m].higher_is_better]}" for m in cols) + " |"
    lines += [f"## Beside {table.title}", "", header, "|" + "---|" * (len(cols) + 1)]
    for who, vals in table.as_dicts():
        lines.append(f"| {who} | " + " | ".join(format_value(m, vals.get(m)) for m in cols) + " |")
    ours = " | ".join(f"**{format_value(m, results[m].value)}**" for m in cols)
    lines.append(f"| **{method}**{' (NOT COMPARABLE)' if not comparable else ''} | {ours} |")
    lines += ["", f"Published rows: {CITATION}, {table.title} ({table.note}); transcribed in "
              "`../shared/design/eval-protocols.md` §A. Implementations differ (see that file, §4): compare with care.",
              "", "## Metrics", "", "| metric | value | mean | counted | excluded | compared with | comparable |",
              "|---|---|---|---|---|---|---|"]
    for m in cols:
        r = results[m]
        lines.append(f"| {m} | {format_value(m, r.value)} | {format_value(m, r.mean)} | {r.count} | {r.excluded} | "
                     f"{protocol.reference_of(m)} | {'yes' if r.comparable else 'NO'} |")
    if per_video and len(sset.groups) <= 60:
        vcols = [m for m in cols if m in per_video]
        lines += ["", "## Per video", "", "| video | " + " | ".join(vcols) + " | frames |",
                  "|" + "---|" * (len(vcols) + 2)]
        for g in sset.groups:
            cnt = max((per_video[m].get(g, {}).get("count", 0) for m in vcols), default=0)
            lines.append(f"| {g} | " + " | ".join(format_value(m, per_video[m].get(g, {}).get("mean"))
                                                   for m in vcols) + f" | {cnt} |")
    elif per_video:
        lines += ["", f"Per-group breakdown ({len(sset.groups)} groups): `per_video.csv`."]
    if all_notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in all_notes]
    lines += ["", "## Options", "", "```json", json.dumps(_json_safe({"run": run_options, "metrics": {
        n: r.options for n, r in results.items()}}), indent=1, default=str), "```"]
    if plot_files:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plot_files[:40]]
    md = out / "report.md"
    md.write_text("\n".join(lines) + "\n")
    headline = ", ".join(f"{m}={format_value(m, results[m].value)}" for m in cols)
    summary["markdown_path"] = str(md)
    summary["headline"] = (f"{protocol.key}: {headline}" + ("" if comparable else f" [{NOT_COMPARABLE}]"))
    summary["plots"] = plot_files
    return summary

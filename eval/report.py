"""The report in RESULTS: ``metrics.json``, ``report.md`` (our row beside the published GOHA table), per-video
and per-sample CSVs, and PNG plots (per-frame curves of each video, metric distributions).

One comparability verdict per run (:func:`verdict`): the run is comparable with the published rows only when no
:class:`Reason` says otherwise: random pipeline weights, a sample set other than the published one (other videos,
another driver, another count, ``--limit``), a metric whose networks are random or not declared official, or a
note that says "not comparable". ``metrics.json``, every row of the markdown metric table, the notes and the
headline all state that one verdict; a run that is not comparable is titled and stamped NOT COMPARABLE and its row
is kept out of the published table. The title says what was scored (outputs, videos or images, exclusions), never
the protocol's nominal count.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .data import natural_key
from .metrics import MetricResult
from .protocols import HDTF_CROSS_ID_DRIVER
from .protocols.pairs import HDTF_TEST_19, TO_CELEBA_SEPARATOR, SampleSet
from .protocols.published import CITATION, TABLES, PublishedTable

__all__ = ["NOT_COMPARABLE", "REPORT_FILES", "Reason", "clear_report", "format_value", "json_safe", "scored_summary",
           "verdict", "write_report"]

NOT_COMPARABLE = "NOT COMPARABLE"
ARROW = {True: "↑", False: "↓"}
_DECIMALS = {"psnr": 2, "fid": 2, "akd": 3}
REPORT_FILES = ("report.md", "metrics.json", "per_sample.csv", "per_video.csv")
"""Files :func:`write_report` writes into RESULTS (plus ``plots/``); :func:`clear_report` removes them."""
_PLOT_PATTERNS = ("distributions.png", "frames_*.png")


def published_provenance(table: PublishedTable) -> list[str]:
    """The report's lines on where a published table's rows come from: the table's citation for the rows
    without their own source, and each other row's source and comparability note."""
    own = dict(table.row_sources)
    cited = [who for who, _ in table.rows if who not in own]
    lines = []
    if cited or not own:
        where = ("transcribed in `../shared/design/eval-protocols.md` §A" if not table.citation
                 else "read in its source")
        lines.append(f"Published rows: {table.citation or CITATION}, {table.title} ({table.note}); {where}. "
                     "Implementations differ (see `../shared/design/eval-protocols.md` §4): compare with care.")
    for who, _ in table.rows:
        if who in own:
            note = table.note_of(who)
            lines.append(f"- {who}: from {table.source_of(who)}" + (f". Comparability: {note}" if note else ""))
    return lines


def clear_report(out: str | Path, extra: Iterable[str] = ()) -> list[str]:
    """Remove the report files of an earlier run from ``out`` (and the file names in ``extra``), so that the folder
    describes only the run about to write it. ``cache/`` and ``predictions/`` stay: a rerun resumes from them.
    Returns the removed paths, relative to ``out``."""
    out = Path(out)
    removed: list[str] = []
    for name in (*REPORT_FILES, *extra):
        path = out / name
        if path.is_file():
            path.unlink()
            removed.append(name)
    plot_dir = out / "plots"
    if plot_dir.is_dir():
        for pattern in _PLOT_PATTERNS:
            for path in sorted(plot_dir.glob(pattern)):
                path.unlink()
                removed.append(f"plots/{path.name}")
        if not any(plot_dir.iterdir()):
            plot_dir.rmdir()
    return removed


@dataclass(frozen=True)
class Reason:
    """Why a run's numbers cannot be put beside the published ones.

    Attributes:
        reason: a few words (``"random weights"``), printed in every row it applies to.
        detail: the full sentence.
        metrics: the metrics it applies to; empty: the whole run.
    """

    reason: str
    detail: str
    metrics: tuple[str, ...] = ()

    def applies_to(self, metric: str) -> bool:
        return not self.metrics or metric in self.metrics

    @property
    def label(self) -> str:
        return f"{', '.join(self.metrics)}: {self.reason}" if self.metrics else self.reason

    def to_dict(self) -> dict[str, Any]:
        return {"reason": self.reason, "detail": self.detail, "applies_to": list(self.metrics) or "all metrics"}


def _n(count: int, one: str, many: str | None = None) -> str:
    return f"{count:,} {one if count == 1 else (many or one + 's')}"


def scored_summary(sset: SampleSet) -> str:
    """What was scored, in words: ``"4 frames of 1 video"``, ``"12 frames: 3 CelebA sources x 2 HDTF videos"``."""
    key = sset.protocol.key
    n = len(sset.samples)
    if key == "celeba/reconstruction":
        return _n(n, "image")
    if key == "celeba/cross-identity":
        return _n(n, "pair") + f" of {_n(2 * n, 'image')}"
    if key == "hdtf/same-identity":
        return f"{_n(n, 'frame')} of {_n(len(sset.groups), 'video')}"
    if key == "hdtf/cross-identity":
        drivers = sorted({s.driver.parent.name for s in sset.samples})
        return (f"{_n(n, 'frame')}: {_n(len(sset.groups), 'source video')} driven by {', '.join(drivers)}")
    if key == "hdtf/to-celeba":
        sources = {s.output_id.split(TO_CELEBA_SEPARATOR)[0] for s in sset.samples}
        return f"{_n(n, 'frame')}: {_n(len(sources), 'CelebA source')} x {_n(len(sset.groups), 'HDTF video')}"
    return f"{_n(n, 'sample')} in {_n(len(sset.groups), 'group')}"


def _exclusion_summary(results: dict[str, MetricResult]) -> str:
    parts = []
    for name, r in results.items():
        if not r.excluded:
            continue
        reasons: dict[str, int] = {}
        for why in r.exclusions.values():
            reasons[why] = reasons.get(why, 0) + 1
        why = "; ".join(f"{k}: {v}" for k, v in sorted(reasons.items(), key=lambda kv: -kv[1])) or "see per_sample.csv"
        parts.append(f"{name} {r.excluded} of {r.count + r.excluded} ({why})")
    return "excluded: " + ("; ".join(parts) if parts else "none")


def verdict(sset: SampleSet, results: dict[str, MetricResult], run_reasons: Iterable[Reason | tuple[str, str]] = (),
            notes: Iterable[str] = ()) -> list[Reason]:
    """Every reason why this run is not comparable with the published rows (none: comparable).

    ``run_reasons`` come from the run (random pipeline weights ...) and apply to every metric; the sample set,
    the metrics' networks and the notes are checked here. A note saying "not comparable" is always a reason, so the
    notes can never contradict the verdict.
    """
    protocol = sset.protocol
    reasons = [r if isinstance(r, Reason) else Reason(*r) for r in run_reasons]
    if protocol.benchmark == "hdtf":
        videos = set(sset.groups)
        if videos != set(HDTF_TEST_19):
            kept = len(videos & set(HDTF_TEST_19))
            others = sorted(videos - set(HDTF_TEST_19), key=natural_key)
            detail = (f"the scored videos are not the 19 published HDTF test videos ({kept} of them scored"
                      + (f", plus {len(others)} other(s): {', '.join(others[:5])}{' ...' if len(others) > 5 else ''}"
                         if others else "") + ")")
            reasons.append(Reason("not the published videos", detail))
        if protocol.key == "hdtf/cross-identity":
            drivers = sorted({s.driver.parent.name for s in sset.samples})
            if drivers != [HDTF_CROSS_ID_DRIVER]:
                reasons.append(Reason("not the published driver",
                                      f"driven by {', '.join(drivers)}; the published driver is {HDTF_CROSS_ID_DRIVER}"))
    if len(sset.samples) != protocol.published_count:
        table = TABLES[protocol.table]
        few = len(sset.samples) < protocol.published_count
        reasons.append(Reason(
            "subset of the protocol" if few else "not the published sample set",
            f"scored {scored_summary(sset)}; the published numbers are over "
            f"{protocol.published_count:,} outputs ({table.note})"))
    for name, r in results.items():
        if not r.comparable:
            why = [n for n in r.notes if "comparable" in n.lower()]
            reasons.append(Reason("random or unofficial network",
                                  "; ".join(why) or f"{name} ran a network with random or unofficial weights",
                                  (name,)))
    if not reasons:
        flagged = [n for n in notes if "not comparable" in n.lower()]
        if flagged:
            reasons.append(Reason("see notes", "; ".join(flagged)))
    return reasons


def _row_verdict(metric: str, reasons: Sequence[Reason]) -> tuple[bool, list[str]]:
    """The verdict of one metric row: the run's (never another one), with the reasons that apply to this metric,
    or, when none applies to it alone, the run's reasons (the row is still part of a run that is not
    comparable)."""
    if not reasons:
        return True, []
    own = [r.label for r in reasons if r.applies_to(metric)]
    return False, own or [f"the run: {r.label}" for r in reasons]


def format_value(metric: str, value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if math.isinf(value):
        return "inf"
    return f"{value:.{_DECIMALS.get(metric, 4 if metric in ('aed', 'apd') else 3)}f}"


def json_safe(x: Any) -> Any:
    """``x`` with non-finite floats as strings and tuples as lists, for ``json.dumps``."""
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [json_safe(v) for v in x]
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
                 plots: bool = True, not_comparable: Iterable[Reason | tuple[str, str]] = (),
                 predictions: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the report files into ``out`` and return the ``metrics.json`` content (plus file paths).

    ``not_comparable``: reasons of the run (``Reason`` or ``(reason, detail)``, e.g. ``("random weights", ...)``)
    that make every number of it not comparable; :func:`verdict` adds those it can see itself. ``predictions``:
    what was taken from the predictions folder (:meth:`eval.data.PredictionFiles.facts`: files not scored and why,
    renamed, resized, formats), written to ``metrics.json`` (``predictions``, ``scored.dropped``) and ``report.md``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    protocol = sset.protocol
    table = TABLES[protocol.table]
    all_notes = list(dict.fromkeys([*notes, *protocol.notes, *(n for r in results.values() for n in r.notes)]))
    reasons = verdict(sset, results, not_comparable, all_notes)
    comparable = not reasons
    if not comparable:
        all_notes.insert(0, f"{NOT_COMPARABLE}: " + "; ".join(r.label for r in reasons))
    rows = {n: _row_verdict(n, reasons) for n in results}
    scored = scored_summary(sset)
    exclusions = _exclusion_summary(results)
    dropped = list((predictions or {}).get("dropped", []))
    dropped_text = ("; not scored from the predictions folder: "
                    + "; ".join(f"{_n(d['count'], 'file')}, {d['reason']}" for d in dropped)) if dropped else ""
    group_of = {s.id: s.group for s in sset.samples}
    per_video = {name: {str(g): v for g, v in r.breakdown(lambda sid: group_of[str(sid)]).items()}
                 for name, r in results.items() if r.aggregation == "mean"}
    metrics_json = {}
    for n, r in results.items():
        d = r.to_dict()
        d["networks_comparable"] = d.pop("comparable")  # the metric's own networks; the row follows the verdict
        d["comparable"], d["comparable_reasons"] = rows[n][0], rows[n][1]
        metrics_json[n] = d
    summary: dict[str, Any] = {
        "benchmark": protocol.benchmark, "protocol": protocol.name, "method": method,
        "comparable": comparable, "stamp": None if comparable else NOT_COMPARABLE,
        "verdict": {"comparable": comparable, "stamp": None if comparable else NOT_COMPARABLE,
                    "reasons": [r.to_dict() for r in reasons]},
        "scored": {"summary": scored, "samples": len(sset.samples), "groups": len(sset.groups),
                   "group_ids": list(sset.groups), "exclusions": exclusions,
                   "dropped": [{"reason": d["reason"], "count": d["count"]} for d in dropped],
                   "dropped_count": sum(d["count"] for d in dropped),
                   "published": f"{protocol.published_count:,} outputs ({table.note})"},
        "samples": len(sset.samples), "groups": len(sset.groups), "published_count": protocol.published_count,
        "metrics": metrics_json,
        "references": {n: protocol.reference_of(n) for n in results},
        "per_video": per_video, "options": run_options, "notes": all_notes,
        "published_table": protocol.table, "elapsed_s": elapsed_s, "cache": cache_stats or {},
        "predictions": predictions,
    }
    (out / "metrics.json").write_text(json.dumps(json_safe(summary), indent=1, default=str))

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
    stamp = "" if comparable else f" — **{NOT_COMPARABLE}**"
    lines = [f"# {protocol.description}: {scored}{stamp}", ""]
    if comparable:
        lines += ["**Verdict: comparable** with the published rows: the published sample set, no random or "
                  "unofficial network (implementations still differ: see below).", ""]
    else:
        lines += [f"> **Verdict: {NOT_COMPARABLE}**: these numbers must not be put beside published ones.", ">"]
        lines += [f"> - **{r.label}**: {r.detail}" for r in reasons]
        lines += [""]
    lines += [f"Method: `{method}` · protocol `{protocol.key}` · scored {scored}; "
              f"{exclusions}{dropped_text} · published: {protocol.published_count:,} outputs ({table.note})", ""]
    cols = [m for m in table.metrics if m in results] + [m for m in results if m not in table.metrics]
    header = "| Method | " + " | ".join(f"{m.upper()} {ARROW[results[m].higher_is_better]}" for m in cols) + " |"
    published_rows = [f"| {who} | " + " | ".join(format_value(m, vals.get(m)) for m in cols) + " |"
                      for who, vals in table.as_dicts()]
    if comparable:
        ours = " | ".join(f"**{format_value(m, results[m].value)}**" for m in cols)
        lines += [f"## Beside {table.title}", "", header, "|" + "---|" * (len(cols) + 1), *published_rows,
                  f"| **{method}** | {ours} |"]
    else:
        ours = " | ".join(format_value(m, results[m].value) for m in cols)
        lines += [f"## {table.title} (published; our row is not comparable and is kept out of it)", "", header,
                  "|" + "---|" * (len(cols) + 1), *published_rows, "",
                  f"Our row, {NOT_COMPARABLE} ({'; '.join(r.label for r in reasons)}):", "", header,
                  "|" + "---|" * (len(cols) + 1), f"| {method} ({NOT_COMPARABLE}) | {ours} |"]
    lines += ["", *published_provenance(table),
              "", "## Metrics", "", "| metric | value | mean | counted | excluded | compared with | comparable |",
              "|---|---|---|---|---|---|---|"]
    for m in cols:
        r = results[m]
        ok, why = rows[m]
        lines.append(f"| {m} | {format_value(m, r.value)} | {format_value(m, r.mean)} | {r.count} | {r.excluded} | "
                     f"{protocol.reference_of(m)} | {'yes' if ok else 'NO: ' + '; '.join(why)} |")
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
    if predictions:
        lines += ["", "## Predictions folder", "", f"`{predictions.get('folder')}`: "
                  f"{_n(predictions.get('scored_files', 0), 'file')} scored"]
        for d in dropped:
            shown = ", ".join(f"`{f}`" for f in d.get("files", [])[:5])
            more = " ..." if d["count"] > 5 else ""
            lines.append(f"- not scored: {_n(d['count'], 'file')}, {d['reason']}: {shown}{more}")
        if predictions.get("renamed"):
            lines.append(f"- {_n(predictions['renamed'], 'file')} not named `<frame:06d>.png`, matched to their "
                         "frame by the number in their name")
        if predictions.get("formats"):
            lines.append("- formats: " + ", ".join(f"{ext} {n:,}" for ext, n in predictions["formats"].items()))
        for change, n in (predictions.get("resized") or {}).items():
            lines.append(f"- resized (--resize, bicubic): {_n(n, 'file')} {change}")
    if all_notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in all_notes]
    lines += ["", "## Options", "", "```json", json.dumps(json_safe({"run": run_options, "metrics": {
        n: r.options for n, r in results.items()}}), indent=1, default=str), "```"]
    if plot_files:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plot_files[:40]]
    md = out / "report.md"
    md.write_text("\n".join(lines) + "\n")
    headline = ", ".join(f"{m}={format_value(m, results[m].value)}" for m in cols)
    summary["markdown_path"] = str(md)
    summary["headline"] = (f"{protocol.key} ({scored}): {headline}"
                           + ("" if comparable else f" [{NOT_COMPARABLE}: {'; '.join(r.label for r in reasons)}]"))
    summary["plots"] = plot_files
    return summary

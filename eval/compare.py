"""``python -m eval.compare RESULTS_A RESULTS_B ... [--out DIR]``: several methods' ``eval.run`` results side by side.

    python -m eval.compare results/ours results/otavatar results/rome --out results/compare

Reads each RESULTS folder's ``metrics.json`` (what ``python -m eval.run`` writes at the end of a run: the metric
values, the per-video means and the comparability verdict) and puts them in one Markdown table (one row per method,
one column per metric, the best value of each column in bold), per-video tables (one per metric), and one plot
(a panel per metric: the overall value and every video's mean, a bar per method). With ``--out DIR`` it writes
``DIR/compare.md``, ``DIR/compare.json`` and ``DIR/compare.png``; without it the Markdown goes to stdout.

Every folder must be an ``eval.run`` result of the same benchmark and protocol: results of different ones are an
error unless ``--allow-mixed`` (then a warning, repeated in the Markdown). Results scored on different sample sets
(other videos, ``--limit``) or with other metric options are compared with a note saying so; each row keeps its own
verdict (a run stamped NOT COMPARABLE with the published rows says so in its row).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from avatar.cli import ArgumentParser
from avatar.errors import InputError, InputNotFoundError

from .report import format_value, json_safe

__all__ = ["MixedResultsError", "NotAResultsFolderError", "RunResult", "build_parser", "compare", "load_result",
           "main", "markdown", "plot"]

logger = logging.getLogger("eval.compare")

METRICS_FILE = "metrics.json"
_REQUIRED = ("benchmark", "protocol", "metrics")
_MAX_GROUPS = 60  # more groups (CelebA images ...): the per-video tables and bars are left out (see per_video.csv)


class NotAResultsFolderError(InputNotFoundError):
    """A folder given to ``eval.compare`` is not a RESULTS folder written by ``eval.run``."""


class MixedResultsError(InputError):
    """The results are of different benchmarks or protocols (pass ``--allow-mixed`` to compare them anyway)."""


@dataclass
class RunResult:
    """One ``eval.run`` RESULTS folder, as ``eval.compare`` reads it."""

    folder: Path
    method: str
    benchmark: str
    protocol: str
    comparable: bool | None
    stamp: str | None
    scored: str
    samples: int | None
    groups: list[str]
    metrics: dict[str, dict[str, Any]]
    per_video: dict[str, dict[str, dict[str, Any]]]
    label: str = ""
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def key(self) -> str:
        return f"{self.benchmark}/{self.protocol}"

    def value(self, metric: str) -> float | None:
        return _number((self.metrics.get(metric) or {}).get("value"))

    def video_value(self, metric: str, group: str) -> float | None:
        return _number(((self.per_video.get(metric) or {}).get(group) or {}).get("mean"))


def _number(x: Any) -> float | None:
    """A metric value from JSON (``"inf"`` / ``"nan"`` are written as strings), ``None`` when absent."""
    if x is None or isinstance(x, bool):
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def load_result(folder: str | Path) -> RunResult:
    """Read ``folder/metrics.json``; :class:`NotAResultsFolderError` says why a folder is not an ``eval.run``
    result."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NotAResultsFolderError(f"{folder}: no such folder (give the RESULTS folders that python -m eval.run "
                                     "--out wrote)")
    path = folder / METRICS_FILE
    if not path.is_file():
        hint = ("its last eval.run failed (see prediction_errors.txt there)" if (folder / "prediction_errors.txt")
                .is_file() else "its eval.run has not finished" if (folder / "cache").is_dir()
                else "give the folder passed to python -m eval.run --out, not a predictions or data folder")
        raise NotAResultsFolderError(f"{folder} is not an eval.run result: it has no {METRICS_FILE} ({hint})")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise NotAResultsFolderError(f"{path}: not readable as eval.run's metrics.json ({exc})") from None
    missing = [k for k in _REQUIRED if k not in data] if isinstance(data, dict) else list(_REQUIRED)
    if missing or not isinstance(data.get("metrics"), dict):
        raise NotAResultsFolderError(f"{path} is not eval.run's metrics.json (missing {', '.join(missing) or 'metrics'})")
    scored = data.get("scored") or {}
    return RunResult(
        folder=folder, method=str(data.get("method") or folder.name), benchmark=str(data["benchmark"]),
        protocol=str(data["protocol"]), comparable=data.get("comparable"), stamp=data.get("stamp"),
        scored=str(scored.get("summary") or f"{data.get('samples', '?')} samples"),
        samples=data.get("samples"), groups=[str(g) for g in scored.get("group_ids") or []],
        metrics={str(k): v for k, v in data["metrics"].items() if isinstance(v, dict)},
        per_video=data.get("per_video") or {}, raw=data)


def _labels(results: Sequence[RunResult]) -> None:
    """Row labels: the method name, made unique with the folder when two results share it."""
    counts: dict[str, int] = {}
    for r in results:
        counts[r.method] = counts.get(r.method, 0) + 1
    seen: set[str] = set()
    for i, r in enumerate(results):
        label = r.method if counts[r.method] == 1 else f"{r.method} ({r.folder.name})"
        if label in seen:
            label = f"{label} #{i + 1}"
        seen.add(label)
        r.label = label


def check_compatible(results: Sequence[RunResult], allow_mixed: bool = False) -> list[str]:
    """Notes on what differs between the results; raises :class:`MixedResultsError` for different benchmarks or
    protocols unless ``allow_mixed`` (then it is the first note, and a warning)."""
    notes: list[str] = []
    keys = list(dict.fromkeys(r.key for r in results))
    if len(keys) > 1:
        detail = "; ".join(f"{r.folder}: {r.key}" for r in results)
        if not allow_mixed:
            raise MixedResultsError(f"the results are of different benchmarks/protocols ({detail}); their numbers "
                                    "do not measure the same thing. Pass --allow-mixed to put them side by side "
                                    "anyway")
        notes.append(f"MIXED benchmarks/protocols ({detail}): the columns do not measure the same thing")
        logger.warning("%s", notes[-1])
    sets = {(r.samples, tuple(r.groups)) for r in results}
    if len(keys) == 1 and len(sets) > 1:
        notes.append("the results were scored on different sample sets ("
                     + "; ".join(f"{r.label}: {r.scored}" for r in results) + "): their values differ in what was "
                     "averaged, not only in the method")
    metrics = list(dict.fromkeys(m for r in results for m in r.metrics))
    for m in metrics:
        options = {json.dumps((r.metrics.get(m) or {}).get("options"), sort_keys=True, default=str)
                   for r in results if m in r.metrics}
        if len(options) > 1:
            notes.append(f"{m} was computed with different options (networks, weights or presets) in these results: "
                         "see each folder's metrics.json")
        absent = [r.label for r in results if m not in r.metrics]
        if absent:
            notes.append(f"{m} is missing from {', '.join(absent)}")
    return notes


def _best(results: Sequence[RunResult], metric: str, values: Sequence[float | None]) -> float | None:
    higher = next(((r.metrics.get(metric) or {}).get("higher_is_better") for r in results
                   if metric in r.metrics), None)
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if higher is None or len(finite) < 2:
        return None
    return max(finite) if higher else min(finite)


def _arrow(results: Sequence[RunResult], metric: str) -> str:
    higher = next(((r.metrics.get(metric) or {}).get("higher_is_better") for r in results
                   if metric in r.metrics), None)
    return {True: " ↑", False: " ↓"}.get(higher, "")


def compare(results: Sequence[RunResult], allow_mixed: bool = False) -> dict[str, Any]:
    """The comparison as data (what ``compare.json`` holds): methods, metrics, overall and per-video values."""
    results = list(results)
    if not results:
        raise InputError("nothing to compare: give at least one RESULTS folder")
    _labels(results)
    notes = check_compatible(results, allow_mixed)
    metrics = list(dict.fromkeys(m for r in results for m in r.metrics))
    groups = list(dict.fromkeys(g for r in results for g in r.groups))
    per_video_metrics = [m for m in metrics if any(m in r.per_video for r in results)]
    return {
        "protocols": list(dict.fromkeys(r.key for r in results)),
        "methods": [{"label": r.label, "method": r.method, "folder": str(r.folder), "protocol": r.key,
                     "scored": r.scored, "samples": r.samples, "comparable": r.comparable, "stamp": r.stamp}
                    for r in results],
        "metrics": metrics,
        "higher_is_better": {m: next(((r.metrics.get(m) or {}).get("higher_is_better") for r in results
                                      if m in r.metrics), None) for m in metrics},
        "values": {r.label: {m: r.value(m) for m in metrics} for r in results},
        "groups": groups,
        "per_video": {m: {g: {r.label: r.video_value(m, g) for r in results} for g in groups}
                      for m in per_video_metrics},
        "notes": notes,
    }


def markdown(results: Sequence[RunResult], table: dict[str, Any]) -> str:
    """The Markdown of :func:`compare`'s ``table``."""
    metrics: list[str] = table["metrics"]
    title = " + ".join(table["protocols"])
    lines = [f"# {title}: {len(results)} methods compared", ""]
    lines += ["| method | " + " | ".join(f"{m.upper()}{_arrow(results, m)}" for m in metrics)
              + " | scored | verdict (vs published rows) |", "|" + "---|" * (len(metrics) + 3)]
    best = {m: _best(results, m, [r.value(m) for r in results]) for m in metrics}
    for r in results:
        cells = []
        for m in metrics:
            v = r.value(m)
            text = format_value(m, v)
            cells.append(f"**{text}**" if v is not None and best[m] is not None and v == best[m] else text)
        verdict = "comparable" if r.comparable else (r.stamp or "NOT COMPARABLE") if r.comparable is False else "–"
        lines.append(f"| {r.label} | " + " | ".join(cells) + f" | {r.scored} | {verdict} |")
    lines += ["", "Bold: the best value of each column among these methods. Folders: "
              + "; ".join(f"{r.label} = `{r.folder}`" for r in results), ""]
    groups: list[str] = table["groups"]
    if table["per_video"] and len(groups) <= _MAX_GROUPS:
        lines += ["## Per video", ""]
        for m, rows in table["per_video"].items():
            lines += [f"### {m.upper()}{_arrow(results, m)}", "",
                      "| video | " + " | ".join(r.label for r in results) + " |", "|" + "---|" * (len(results) + 1)]
            for g in groups:
                vals = [rows[g].get(r.label) for r in results]
                b = _best(results, m, vals)
                lines.append(f"| {g} | " + " | ".join(
                    f"**{format_value(m, v)}**" if v is not None and b is not None and v == b else format_value(m, v)
                    for v in vals) + " |")
            lines.append("")
    elif table["per_video"]:
        lines += [f"Per-video values of {len(groups)} groups: each folder's per_video.csv.", ""]
    if table["notes"]:
        lines += ["## Notes", ""] + [f"- {n}" for n in table["notes"]] + [""]
    return "\n".join(lines)


def plot(results: Sequence[RunResult], table: dict[str, Any], path: str | Path) -> Path:
    """One PNG: a panel per metric with the overall value and each video's mean, one bar per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics: list[str] = table["metrics"]
    groups: list[str] = table["groups"] if len(table["groups"]) <= _MAX_GROUPS else []
    width_slots = 1 + max((len(groups) for m in metrics if m in table["per_video"]), default=0)
    fig, axes = plt.subplots(len(metrics), 1, figsize=(max(5.0, 0.9 * width_slots * max(1, len(results)) ** 0.5 + 2),
                                                        2.4 * len(metrics)), squeeze=False)
    bar = 0.8 / max(1, len(results))
    for ax, m in zip(axes[:, 0], metrics, strict=True):
        cols = ["all", *(groups if m in table["per_video"] else [])]
        for k, r in enumerate(results):
            vals = [r.value(m)] + [table["per_video"][m][g].get(r.label) for g in cols[1:]]
            ys = [v if v is not None and math.isfinite(v) else float("nan") for v in vals]
            ax.bar([i + (k - (len(results) - 1) / 2) * bar for i in range(len(cols))], ys, width=bar, label=r.label)
        ax.set_xticks(range(len(cols)))
        ax.set_xticklabels(cols, rotation=30 if len(cols) > 4 else 0, ha="right" if len(cols) > 4 else "center",
                           fontsize=7)
        ax.set_title(f"{m}{_arrow(results, m)}", fontsize=9)
    axes[0, 0].legend(fontsize=7, loc="best")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m eval.compare", description=__doc__.split("\n\n")[0],
                       epilog="Exit status: 0 done; 1 the input cannot be used; 2 a bug; 130 interrupted.",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", type=Path, metavar="RESULTS",
                   help="RESULTS folders written by python -m eval.run --out (each holds metrics.json)")
    p.add_argument("--out", type=Path, help="write compare.md, compare.json and compare.png here (default: print "
                                            "the Markdown, no plot)")
    p.add_argument("--allow-mixed", action="store_true",
                   help="compare results of different benchmarks/protocols (a warning instead of an error)")
    p.add_argument("-v", "--verbose", action="count", default=0)
    p.add_argument("-q", "--quiet", action="store_true")
    return p


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """The CLI without ``sys.exit``: returns :func:`compare`'s table plus ``markdown`` and the written paths."""
    args = build_parser().parse_args(argv)
    results = [load_result(folder) for folder in args.results]
    table = compare(results, allow_mixed=args.allow_mixed)
    md = markdown(results, table)
    table["markdown"] = md
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "compare.md").write_text(md)
        (args.out / "compare.json").write_text(json.dumps(
            json_safe({k: v for k, v in table.items() if k != "markdown"}), indent=1, default=str))
        table["markdown_path"] = str(args.out / "compare.md")
        table["plot_path"] = str(plot(results, table, args.out / "compare.png"))
    return table


def main(argv: Sequence[str] | None = None) -> int:
    from avatar.cli import run_guarded
    from avatar.logs import setup_logging

    args = build_parser().parse_args(argv)
    verbosity = -1 if args.quiet else args.verbose
    setup_logging(verbosity)

    def work() -> int:
        table = run(argv)
        if "markdown_path" in table:
            print(table["markdown_path"])
            print(table["plot_path"])
        else:
            print(table["markdown"])
        return 0

    return run_guarded(work, verbosity=verbosity, log=logger, command="eval.compare")


if __name__ == "__main__":
    sys.exit(main())

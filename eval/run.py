"""``python -m eval.run``: score a protocol for our model (``--model``) or for any method's frames (``--predictions``).

    python -m eval.run --benchmark hdtf --protocol same-identity --data DATA --predictions DIR --out RESULTS
    python -m eval.run --benchmark celeba --protocol cross-identity --data DATA --model portrait4d-v2 --out RESULTS
    python -m eval.run --list                                  # every benchmark/protocol: metrics, layout, tables
    accelerate launch --num_processes 4 -m eval.run ...        # split over processes / GPUs
    avatar eval ...                                            # the same command

Every per-sample result is appended to ``RESULTS/cache/`` as it is computed; running the same command again
resumes (only what is missing is computed). Each process scores every world_size-th batch of the protocol's fixed
batches and writes its own cache shard; after a barrier the main process aggregates every cached value in the
protocol's order, so 1 and N processes give the same numbers. What the metrics compute from the reference images
alone is kept in the reference cache (``--reference-cache DIR``, default ``~/.cache/avatar4d/eval-references``;
``eval/reference_cache.py``) and reused by every later run on the same references, whatever method it scores.
See ``eval/README.md``.

A run first removes the previous run's report files from RESULTS (``report.md``, ``metrics.json``, the CSVs, the
plots, ``prediction_errors.txt``), keeping ``cache/`` and ``predictions/`` (what resuming needs), so the folder
never mixes two runs. A method's folder is taken as it comes: frames named ``000123.png``, ``123.png`` or
``frame_123.jpg`` (PNG/JPEG mixed) are matched by their number, the source frame a method wrote beside its outputs is
dropped (and counted in the report), and other sizes are resized to the protocol's with ``--resize``. Random weights (a pipeline made by ``avatar tiny``: its ``pipeline.json`` says
``random_init``) stamp the report NOT COMPARABLE, like every other reason listed in the report's verdict.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from avatar.cli import POSITIVE_INT, ArgumentParser
from avatar.errors import InputError

from . import cache as cache_mod
from .data import PredictionFiles, check_predictions, load_batch, unscored_source_frames
from .metrics import METRICS
from .protocols import BENCHMARKS, HDTF_CROSS_ID_DRIVER, get_protocol
from .protocols.pairs import SampleSet, build_samples
from .reference_cache import ReferenceCache, default_reference_cache_dir
from .scoring import Scorer, aggregate, parse_metric_options

__all__ = ["DistState", "build_parser", "check_args", "list_protocols", "main", "run"]

logger = logging.getLogger("eval.run")

PREDICTION_ERRORS_FILE = "prediction_errors.txt"
DEFAULT_HDTF_LIST = Path(__file__).resolve().parents[2] / "shared" / "media" / "lists" / "hdtf" / "hdtf_test_19.txt"


@dataclass
class DistState:
    """Rank, world size, device and a barrier: accelerate's when launched by it, else one process."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    barrier: Callable[[], None] = lambda: None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def detect(cls) -> DistState:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 or "ACCELERATE_MIXED_PRECISION" in os.environ:
            from accelerate import PartialState

            st = PartialState(cpu=not torch.cuda.is_available())  # several CPU processes (torchrun) too
            return cls(st.process_index, st.num_processes, st.device, st.wait_for_everyone)
        return cls()


def _layout(protocol: Any) -> str:
    """The output layout of a protocol, from the registry (``layout`` when it declares one, else its pairing)."""
    for attr in ("layout", "output_layout", "outputs"):
        value = getattr(protocol, attr, None)
        if isinstance(value, str) and value:
            return value
    if protocol.has_ground_truth:
        return (f"PREDICTIONS/<id>/<frame>.png, one per output, with the id and frame of its ground truth "
                f"DATA/<id>/<frame:06d>.png (pairing: {protocol.pairing})")
    return f"PREDICTIONS/<output id>/<frame>.png, one per output (pairing: {protocol.pairing})"


def _tables_of(protocol: Any) -> list[str]:
    tables = getattr(protocol, "tables", None) or (protocol.table,)
    return [tables] if isinstance(tables, str) else list(tables)


def list_protocols() -> str:
    """What ``--list`` prints: per benchmark and protocol (all from the registry in :mod:`eval.protocols` and
    :mod:`eval.protocols.published`), the metrics and their references, the expected layout, the frame counts and
    the published tables it is compared with."""
    from .protocols.published import TABLES

    lines = ["Benchmarks and protocols of `python -m eval.run` (--benchmark B --protocol P).",
             "Ground truth: DATA/<id>/<frame:06d>.png (python -m eval.prepare). Predictions: PREDICTIONS/<output id>/"
             "<frame> as .png or .jpg, named 000123, 123 or frame_123 (matched by the number).", ""]
    for benchmark in sorted(BENCHMARKS):
        lines.append(f"{benchmark}")
        for name in BENCHMARKS[benchmark]:
            p = get_protocol(benchmark, name)
            arrows = {m: ("↑" if METRICS[m].higher_is_better else "↓") if m in METRICS else "" for m in p.metrics}
            lines.append(f"  --protocol {name}: {p.description or p.key}")
            lines.append("    metrics:  " + ", ".join(f"{m} {arrows[m]} (vs {p.reference_of(m)})" for m in p.metrics))
            lines.append(f"    layout:   {_layout(p)}")
            crop = getattr(p, "crop", None)
            if crop:
                lines.append(f"    crop:     {crop} (ground truth and predictions; python -m eval.prepare)")
            tables = [(key, TABLES.get(key)) for key in _tables_of(p)]
            counted = "; ".join(t.note for _, t in tables if t is not None and t.note)
            per_video = getattr(p, "frames_per_video", None)
            lines.append(f"    frames:   {p.published_count:,} outputs in the published protocol"
                         + (f" ({counted})" if counted else "")
                         + (f"; {per_video} frames sampled per video" if per_video else "")
                         + f"; a ground-truth frame per output: {'yes' if p.has_ground_truth else 'no'}")
            option_args = p.metric_option_args() if hasattr(p, "metric_option_args") else []
            if option_args:
                lines.append("    published metric variants: " + " ".join(f"--metric-option {a}" for a in option_args))
            for key, table in tables:
                if table is None:
                    lines.append(f"    compared with: {key} (not in eval/protocols/published.py)")
                else:
                    rows = ", ".join(who for who, _ in table.rows) or "no published rows transcribed yet"
                    lines.append(f"    compared with: {table.title} [{key}]: {rows}")
            for note in p.notes:
                lines.append(f"    note:     {note}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


class _ListAction(argparse.Action):
    """``--list``: print :func:`list_protocols` and exit 0 (no other option needed)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        sys.stdout.write(list_protocols())
        parser.exit(0)


def _help_epilog() -> str:
    protocols = "; ".join(f"{b}: {', '.join(BENCHMARKS[b])}" for b in sorted(BENCHMARKS))
    metrics = ", ".join(f"{n} {'↑' if cls.higher_is_better else '↓'}" for n, cls in METRICS.items())
    return (f"Protocols (--benchmark: --protocol): {protocols}.\n"
            f"Metrics (--metrics, a subset of the protocol's): {metrics}.\n"
            "--list prints every protocol's metrics, layout, frame counts and published tables.\n\n"
            "Exit status: 0 done; 1 the input cannot be used (one plain sentence on stderr; -v adds the traceback); "
            "2 a bug (traceback printed); 130 interrupted.")


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m eval.run", description=__doc__.split("\n\n")[0],
                       epilog=_help_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--list", action=_ListAction,
                   help="print every benchmark and protocol (metrics, layout, frame counts, published tables); exit")
    p.add_argument("--benchmark", required=True, choices=sorted(BENCHMARKS))
    p.add_argument("--protocol", required=True,
                   help="; ".join(f"{b}: {' | '.join(BENCHMARKS[b])}" for b in sorted(BENCHMARKS)))
    p.add_argument("--data", required=True, type=Path, help="prepared ground truth: DATA/<id>/<frame:06d>.png")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="generate with our pipeline: a model id or a local folder (avatar tiny DIR)")
    src.add_argument("--predictions", type=Path,
                     help="score another method's frames: PREDICTIONS/<id>/<frame>.png|.jpg (000123, 123, "
                          "frame_123 ...: matched by the number; a source frame written with them is not scored)")
    p.add_argument("--resize", action="store_true",
                   help="resize predictions of another size to the protocol's (the reference images') size, bicubic; "
                        "without it they are an error")
    p.add_argument("--out", required=True, type=Path, help="RESULTS folder (cache, report, plots)")
    p.add_argument("--metrics", help="comma-separated subset of the protocol's metrics (default: all of them): "
                                     + ", ".join(METRICS))
    p.add_argument("--metric-option", action="append", default=[], metavar="METRIC.OPTION=VALUE",
                   help="metric option, e.g. ssim.preset=wang2004 or apd.include_translation=false (repeatable)")
    p.add_argument("--limit", type=POSITIVE_INT, help="at most N frames per video (hdtf) or N samples (celeba)")
    p.add_argument("--sources", type=Path, help="hdtf to-celeba: the prepared CelebA folder")
    p.add_argument("--source-list", type=Path, help="hdtf to-celeba: CelebA ids to use as the 60 sources")
    p.add_argument("--video-list", type=Path,
                   help=f"hdtf videos, one per line (default: the published 19; {DEFAULT_HDTF_LIST.name})")
    p.add_argument("--driver", default=HDTF_CROSS_ID_DRIVER, help="hdtf cross-identity driving video")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=16)
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: the process's accelerator)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                   help="--model: the pipeline's dtype")
    p.add_argument("--reenact-mode", default="auto", choices=("auto", "relative", "absolute"))
    p.add_argument("--allow-random-weights", action="store_true",
                   help="run networks whose weights are missing with random init: results stamped NOT COMPARABLE")
    refc = p.add_mutually_exclusive_group()
    refc.add_argument("--reference-cache", type=Path, metavar="DIR",
                      help="keep what the metrics compute from the reference images alone here, for every later run "
                           "on the same references (default: $AVATAR_CACHE/eval-references, i.e. "
                           "~/.cache/avatar4d/eval-references)")
    refc.add_argument("--no-reference-cache", action="store_true",
                      help="compute the reference side every time (nothing read or written)")
    p.add_argument("--method-name", help="row label in the report (default: the model or predictions folder)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (debug; tracebacks of errors)")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    return p


def check_args(args: argparse.Namespace) -> None:
    """Option values that cannot work, reported as :class:`~avatar.errors.InputError` before any work."""
    try:
        protocol = get_protocol(args.benchmark, args.protocol)
    except KeyError as exc:
        raise InputError(f"--protocol {args.protocol}: {exc.args[0] if exc.args else exc}") from None
    if args.metrics:
        names = [m.strip().lower() for m in args.metrics.split(",") if m.strip()]
        unknown = [m for m in names if m not in protocol.metrics]
        if unknown or not names:
            raise InputError(f"--metrics {args.metrics}: {', '.join(unknown) or 'nothing'} is not a metric of "
                             f"{protocol.key} (its metrics: {', '.join(protocol.metrics)})")
    try:
        parse_metric_options(args.metric_option)
    except ValueError as exc:
        raise InputError(f"--metric-option: {exc}") from None
    for option, value in (("--limit", args.limit), ("--batch-size", args.batch_size)):
        if value is not None and value < 1:
            raise InputError(f"{option} must be at least 1, got {value}")
    folders = [("--data", args.data, "prepare it with `avatar prepare`"),
               ("--predictions", args.predictions, "one <id>/<frame:06d>.png per sample"),
               ("--sources", args.sources, "the prepared CelebA folder")]
    for option, folder, what in folders:
        if folder is not None and not Path(folder).is_dir():
            raise InputError(f"{option} {folder}: no such folder ({what})")
    for option, file in (("--video-list", args.video_list), ("--source-list", args.source_list)):
        if file is not None and not Path(file).is_file():
            raise InputError(f"{option} {file}: no such file")
    if args.reference_cache is not None and Path(args.reference_cache).exists() \
            and not Path(args.reference_cache).is_dir():
        raise InputError(f"--reference-cache {args.reference_cache}: not a folder")
    if args.device:
        try:
            device = torch.device(args.device)
        except RuntimeError as exc:
            raise InputError(f"--device {args.device}: {exc}") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise InputError(f"--device {args.device}: no CUDA device is available here; use --device cpu")


def _after_batch(done: int) -> None:
    """Hook called after each cached batch (tests inject a crash here)."""


def _progress(total: int, desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="frame", disable=not enabled, dynamic_ncols=True, smoothing=0.1)


def _reference_cache(args: argparse.Namespace, device: torch.device) -> ReferenceCache | None:
    """The reference-side cache of ``--reference-cache`` (default folder unless ``--no-reference-cache``)."""
    if args.no_reference_cache:
        return None
    root = args.reference_cache or default_reference_cache_dir()
    try:
        return ReferenceCache(root, device_type=device.type)
    except OSError as exc:
        raise InputError(f"--reference-cache {root}: cannot use it as a cache folder ({exc}); pass another "
                         "--reference-cache DIR or --no-reference-cache") from None


def _reference_cache_facts(cache: ReferenceCache | None) -> dict[str, Any] | None:
    """This process's use of the reference cache, for ``metrics.json`` (``None``: no cache)."""
    if cache is None:
        return None
    st = cache.stats
    return {"dir": str(cache.root), "rows_read": st.hits, "rows_computed": st.computed,
            "unreadable": st.unreadable, "not_cached": sorted(set(st.uncached_metrics))}


def _samples(args: argparse.Namespace) -> SampleSet:
    protocol = get_protocol(args.benchmark, args.protocol)
    video_list = args.video_list
    return build_samples(protocol, args.data, sources=args.sources, video_list=video_list,
                         source_list=args.source_list, driver=args.driver, limit=args.limit)


def run(argv: Sequence[str] | None = None, *, state: DistState | None = None, report: bool = True,
        scorer_kwargs: dict[str, Any] | None = None, pipeline: Any = None) -> dict[str, Any] | None:
    """Run the benchmark (the CLI without ``sys.exit``). Returns the report dict on the main process.

    ``state`` overrides the process layout (tests simulate ranks); ``report=False`` scores this rank's shard and
    stops before the aggregation; ``scorer_kwargs`` and ``pipeline`` let tests plug in tiny networks.
    """
    args = build_parser().parse_args(argv)
    check_args(args)
    state = state or DistState.detect()
    device = torch.device(args.device) if args.device else state.device
    started = time.time()
    sset = _samples(args)
    protocol = sset.protocol
    metrics = [m.strip().lower() for m in args.metrics.split(",")] if args.metrics else list(protocol.metrics)
    options = parse_metric_options(args.metric_option)
    out = args.out
    cache_dir = out / "cache"
    notes = list(sset.notes)
    gen_facts: dict[str, Any] = {}
    show = state.is_main and not args.no_progress
    run_reasons: list[tuple[str, str]] = []  # (short reason, detail): the whole run is not comparable
    if state.is_main:  # the folder describes this run only: the last run's report files go (not the cache)
        from .report import clear_report

        clear_report(out, extra=(PREDICTION_ERRORS_FILE,))

    if args.model is not None:
        from .generate import generate, pipeline_random_weights, reenact_mode

        pred_root = out / "predictions"
        mode = reenact_mode(protocol.key, args.reenact_mode)
        if pipeline is None:
            from avatar.pipelines.auto import load_pipeline

            pipeline = load_pipeline(args.model, device=device, dtype=getattr(torch, args.dtype))
        random_reason = pipeline_random_weights(pipeline, args.model)
        if random_reason:
            logger.warning("%s: its numbers are stamped NOT COMPARABLE", random_reason)
        folders = list(dict.fromkeys(s.output_id for s in sset.samples))
        mine = set(folders[state.rank::state.world_size])  # one avatar per folder: folders are sharded
        my_samples = [s for s in sset.samples if s.output_id in mine]
        bar = _progress(len(my_samples), "generate", show)
        try:
            gen_facts = generate(pipeline, my_samples, pred_root, mode=mode, batch_size=args.batch_size,
                                 progress=bar, model=args.model)
        finally:
            bar.close()
        gen_facts["reenact_mode"] = mode
        notes += gen_facts.get("notes", [])
        random_reason = random_reason or gen_facts.get("random_weights")
        gen_facts["random_weights"] = random_reason
        state.barrier()
    else:
        from .generate import GENERATION_FILE, read_generation

        pred_root = args.predictions
        made = read_generation(pred_root)  # frames an earlier --model run generated (RESULTS/predictions)
        random_reason = (f"{Path(pred_root) / GENERATION_FILE}: these frames were generated with random weights"
                         f" ({made.get('random_weights') or made.get('model') or 'random_init'})"
                         if made.get("random_init") else None)
    if random_reason:
        run_reasons.append(("random weights", random_reason))
    if protocol.crop is not None:  # the protocol's crop must be on the predictions too (DATA: see the sample notes)
        from .protocols.crop import read_recrop_marker

        marker = read_recrop_marker(pred_root)
        if marker is None or marker.get("crop") != protocol.crop:
            run_reasons.append(("predictions not re-cropped",
                                f"{pred_root} has no recrop.json for {protocol.crop}: run python -m eval.prepare recrop "
                                f"PREDICTIONS --out PREDICTIONS_RECROPPED and score that folder"))

    expected = [(s.id, s.target or s.source) for s in sset.samples]
    preds: PredictionFiles = check_predictions(
        pred_root, expected, allowed=sset.all_ids, report_file=out / PREDICTION_ERRORS_FILE,
        ignored=unscored_source_frames(sset.samples, sset.all_ids), resize=args.resize)
    notes += preds.notes()
    if preds.dropped_count and state.is_main:
        logger.info("%s: %d file(s) not scored (%s)", pred_root, preds.dropped_count, "; ".join(preds.dropped))

    reference_cache = _reference_cache(args, device)
    scorer = Scorer(protocol, metrics, options, device=device, allow_random_weights=args.allow_random_weights,
                    reference_cache=reference_cache, **(scorer_kwargs or {}))
    manifest = {"protocol": protocol.key, "source": str(args.model or Path(pred_root).resolve()),
                "metrics": scorer.manifest_metrics()}
    if state.is_main:
        cache_mod.check_manifest(cache_dir, manifest)
    state.barrier()
    if not state.is_main:
        cache_mod.check_manifest(cache_dir, manifest)  # raises here too if it did on the main process

    cached = cache_mod.load(cache_dir)
    # fixed global batches, sharded by batch index: every sample is always scored in the same batch, so its
    # values do not depend on the number of processes (batched float kernels are not bitwise batch-invariant)
    bs = max(1, args.batch_size)
    batches = [sset.samples[i:i + bs] for i in range(0, len(sset.samples), bs)]
    mine = batches[state.rank::state.world_size]
    pending = [b for b in mine if any(not cached.has(s.id, m) for s in b for m in metrics)]
    bar = _progress(sum(len(b) for b in mine), f"score {protocol.key}", show)
    bar.update(sum(len(b) for b in mine) - sum(len(b) for b in pending))
    done = 0
    with cache_mod.ShardWriter(cache_dir, state.rank) as writer:
        try:
            for batch in pending:
                todo = {m: [i for i, s in enumerate(batch) if not cached.has(s.id, m)] for m in metrics}
                pred = load_batch([preds.path(s.id) for s in batch], sizes=[preds.size(s.id) for s in batch])
                records, refs = scorer.score(batch, pred, todo, cached)
                writer.write(records, refs)
                for r in records:
                    cached.add(r)
                bar.update(len(batch))
                done += len(batch)
                _after_batch(done)
        finally:
            bar.close()
    if reference_cache is not None:
        st = reference_cache.stats
        logger.info("reference cache %s: %d reference feature rows read, %d computed%s", reference_cache.root,
                    st.hits, st.computed, f", {st.unreadable} unreadable" if st.unreadable else "")
    state.barrier()
    if not (report and state.is_main):
        return None

    from .report import write_report

    cached = cache_mod.load(cache_dir)
    results = aggregate(scorer, sset.samples, cached)
    run_options = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    run_options["processes"] = state.world_size
    run_options["device"] = str(device)
    run_options["generation"] = gen_facts
    return write_report(out, sset, results, run_options=run_options, notes=notes,
                        method=args.method_name or (args.model or Path(pred_root).name),
                        elapsed_s=time.time() - started, plots=not args.no_plots,
                        cache_stats={"duplicates_ignored": cached.duplicates,
                                     "truncated_lines": cached.truncated_lines,
                                     "reference_cache": _reference_cache_facts(reference_cache)},
                        not_comparable=run_reasons, predictions=preds.facts())


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m eval.run`` / ``avatar eval``: exit status 0, 1 (the input cannot be used), 2 (a bug), 130."""
    from avatar.cli import run_guarded
    from avatar.logs import setup_logging

    args = build_parser().parse_args(argv)
    verbosity = -1 if args.quiet else args.verbose
    setup_logging(verbosity)

    def work() -> int:
        summary = run(argv)
        if summary is not None:
            print(summary["markdown_path"])
            print(summary["headline"])
        return 0

    return run_guarded(work, verbosity=verbosity, log=logger, command="eval")


if __name__ == "__main__":
    sys.exit(main())

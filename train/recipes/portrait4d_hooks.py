"""What a Portrait4D run does besides its phases: image grids, held-out reconstruction metrics, the exported
model and its card.

* :func:`render_batch` - G_ema on fixed inputs (deterministic rendering at the recipe's resolution).
* :func:`grid_images` - the snapshot grid: one row per sample, ``source | driving | target | raw | SR | seg |
  depth`` (the official ``reals.png`` + ``fakes*_{sr,seg,depth}.png`` in one picture).
* :func:`heldout_metrics` - PSNR (dB, on [0, 1] images), L1 and, with a network, LPIPS of G_ema's SR output
  against the targets of fixed held-out (source, driving) pairs: the number a short run must raise.
* :func:`check_benchmark_args` / :func:`run_benchmark` - ``--eval-benchmark``: ``python -m eval.run`` (the
  benchmark suite, its protocols, metrics and report) on each exported G_ema, driven by a pipeline's face
  preprocessing and motion encoder.
* :func:`write_export` - ``save_pretrained`` of G_ema plus ``README.md`` (model card from
  ``avatar/model_cards/portrait4d-trained.md``: recipe, data, steps, hardware, losses, held-out and benchmark
  results as ``model-index`` metadata).
"""

from __future__ import annotations

import json
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avatar.model_cards import render_model_card
from avatar.models.portrait4d import Portrait4D
from avatar.models.portrait4d.training import train_forward
from eval.metrics.psnr import psnr
from train.recipes.portrait4d_loss import ReconBatch

__all__ = ["BENCHMARK_OWN_OPTIONS", "check_benchmark_args", "grid_images", "heldout_metrics", "model_card_values",
           "render_batch", "run_benchmark", "write_export"]

BENCHMARK_OWN_OPTIONS = ("--model", "--predictions", "--out")
"""``eval.run`` options the training run sets itself (the export folder, the report folder)."""


@torch.no_grad()
def render_batch(model: Portrait4D, batch: ReconBatch, nr: int) -> dict[str, Tensor]:
    """G_ema's outputs for ``batch`` (source image + motions, driving FLAME at ``c_recon``), deterministic."""
    return train_forward(model, batch.source_image, batch.source_motion, batch.driving_motion, batch.c_recon, nr,
                         head_pose=batch.head_pose(), motion_scale=1.0 if model.config.encoders.motion_dim else 0,
                         deterministic=True)


def _fit(x: Tensor, size: int) -> Tensor:
    x = x.float()
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True) \
        if x.shape[-1] != size else x


@torch.no_grad()
def grid_images(model: Portrait4D, batch: ReconBatch, nr: int) -> tuple[Tensor, int]:
    """The snapshot grid (images in [-1, 1]) and its number of columns (7)."""
    out = render_batch(model, batch, nr)
    size = batch.target_image.shape[-1]
    depth = out["image_depth"]
    lo = depth.amin(dim=(1, 2, 3), keepdim=True)
    hi = depth.amax(dim=(1, 2, 3), keepdim=True)
    depth = (depth - lo) / (hi - lo).clamp_min(1e-8) * 2 - 1
    columns = [batch.source_image, batch.driving_image, batch.target_image, out["image"].clamp(-1, 1),
               out["image_sr"].clamp(-1, 1), out["seg"], depth]
    rows = torch.stack([_fit(c, size) for c in columns], dim=1)  # (B, 7, 3, S, S)
    return rows.flatten(0, 1), len(columns)


@torch.no_grad()
def heldout_metrics(model: Portrait4D, batch: ReconBatch, nr: int, lpips: nn.Module | None = None
                    ) -> dict[str, float]:
    """``{"psnr", "l1", ["lpips"]}`` of G_ema's SR output against ``batch.target_image`` (means over the batch;
    PSNR per image on [0, 1] then averaged)."""
    pred = render_batch(model, batch, nr)["image_sr"].clamp(-1, 1)
    target = batch.target_image
    out = {"psnr": float(psnr((pred + 1) / 2, (target + 1) / 2).mean()),
           "l1": float((pred - target).abs().mean())}
    if lpips is not None:
        out["lpips"] = float(lpips(pred, target).mean())
    return out


def check_benchmark_args(args: tuple[str, ...] | list[str]) -> list[str]:
    """``--eval-benchmark``'s ``eval.run`` arguments, checked by eval.run's own parser at the start of a run (a
    typo fails now, not at the first export); ``--model``, ``--predictions`` and ``--out`` are the run's."""
    from avatar.errors import ConfigError
    from eval.run import build_parser, check_args

    args = [str(a) for a in args]
    own = [a for a in args if a.split("=", 1)[0] in BENCHMARK_OWN_OPTIONS]
    if own:
        raise ConfigError(f"--eval-benchmark sets {', '.join(BENCHMARK_OWN_OPTIONS)} itself (the export and "
                          f"OUT/eval/step-N); remove {', '.join(own)}")
    try:
        parsed = build_parser().parse_args([*args, "--model", "export", "--out", "eval"])
    except SystemExit as exc:
        raise ConfigError(f"--eval-benchmark {' '.join(args)}: not valid eval.run arguments (python -m eval.run "
                          "--help lists them)") from exc
    try:
        check_args(parsed)
    except (ValueError, OSError) as exc:
        raise ConfigError(f"--eval-benchmark: {exc}") from exc
    return args


def run_benchmark(model: Portrait4D, export_dir: Path, out: Path, args: list[str], pipeline: Any,
                  device: torch.device) -> dict[str, Any]:
    """``python -m eval.run ARGS --model EXPORT --out OUT`` with ``model`` (the exported G_ema) in ``pipeline``'s
    place of the reconstructor: the pipeline's face preprocessing and motion encoder, our trained network
    (``export_dir`` names the model in the report; nothing is read from it). Returns
    the report (``metrics.json``: ``metrics``, ``comparable``, ``benchmark``, ``protocol``, ...). The training
    run waits for it (keep ``--limit`` small)."""
    from eval.run import run as eval_run

    previous = pipeline.reconstructor
    pipeline.reconstructor = model
    try:
        with torch.no_grad():
            report = eval_run([*args, "--model", str(export_dir), "--out", str(out), "--no-progress", "--device",
                               str(device)], pipeline=pipeline)
    finally:
        pipeline.reconstructor = previous
    assert report is not None  # one process: the main one
    return report


def _benchmark_rows(report: Mapping[str, Any]) -> tuple[str, str]:
    """Model-card table rows and ``model-index`` metric entries of an eval.run report."""
    name = f"{report.get('benchmark')} {report.get('protocol')}"
    reasons = [r.get("reason", str(r)) if isinstance(r, Mapping) else str(r)
               for r in report.get("verdict", {}).get("reasons", [])]
    stamp = "" if report.get("comparable") else f" (NOT COMPARABLE: {'; '.join(reasons) or 'see the report'})"
    rows, index = [], []
    for metric, value in report.get("metrics", {}).items():
        v = value.get("value") if isinstance(value, Mapping) else value
        if v is None:
            continue
        rows.append(f"| {name}: {metric}{stamp} | {float(v):.4f} |")
        index.append(f"      - type: {metric}\n        value: {float(v):.4f}\n        name: {name} {metric}")
    return "\n".join(rows), "\n".join(index)


def model_card_values(*, repo_id: str, recipe: Mapping[str, Any], config: Mapping[str, Any], step: int,
                      kimg: float, metrics: Mapping[str, float] | None, random_loss_networks: bool,
                      benchmark: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The placeholders of the ``portrait4d-trained`` card (``benchmark``: the eval.run report of this export)."""
    device = "CPU"
    if torch.cuda.is_available():
        device = f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    losses = recipe.get("losses", {})
    loss_lines = "\n".join(f"| {k} | {v} |" for k, v in losses.items())
    if metrics:
        results = "\n".join(f"| {k} | {v:.4f} |" for k, v in metrics.items())
        index = "\n".join(
            f"      - type: {k}\n        value: {v:.4f}\n        name: held-out {k}" for k, v in metrics.items())
        model_index = (f"model-index:\n- name: {repo_id}\n  results:\n  - task:\n      type: image-to-3d\n"
                       f"      name: one-shot head reconstruction\n    dataset:\n      type: custom\n"
                       f"      name: {config.get('eval_data') or config.get('data_path')} (held-out pairs)\n"
                       f"    metrics:\n{index}\n")
    else:
        results, model_index = "| (no held-out evaluation ran: pass --eval-every N) | |", ""
    if benchmark:
        rows, index = _benchmark_rows(benchmark)
        results = f"{results}\n{rows}" if metrics else rows
        entry = (f"  - task:\n      type: image-to-3d\n      name: one-shot head reenactment\n    dataset:\n"
                 f"      type: {benchmark.get('benchmark')}\n      name: {benchmark.get('benchmark')} "
                 f"({benchmark.get('protocol')}, eval.run)\n    metrics:\n{index}\n")
        model_index = (model_index + entry) if model_index else \
            f"model-index:\n- name: {repo_id}\n  results:\n{entry}"
    caveat = ("**The loss networks (LPIPS, ArcFace, PD-FGC) had random weights in this run: it is a smoke test, "
              "not a model.**\n\n" if random_loss_networks else "")
    return {
        "model_id": repo_id, "model_index": model_index, "recipe": recipe.get("name", "?"),
        "data": config.get("data_path"), "init": config.get("init") or "fresh weights", "step": step,
        "kimg": f"{kimg:.3f}", "batch_size": config.get("batch_size"), "hardware": device,
        "python": platform.python_version(), "torch": torch.__version__, "loss_table": loss_lines,
        "results_table": results, "caveat": caveat,
    }


def write_export(model: Portrait4D, directory: Path, card_values: Mapping[str, Any]) -> None:
    """``save_pretrained`` of ``model`` into ``directory`` plus its model card ``README.md`` and the training
    facts ``training.json``."""
    model.save_pretrained(directory)
    (directory / "README.md").write_text(render_model_card(card_values, "portrait4d-trained"), encoding="utf-8")
    (directory / "training.json").write_text(json.dumps({k: v for k, v in card_values.items()
                                                          if k not in ("loss_table", "results_table",
                                                                       "model_index", "caveat")},
                                                         indent=2, default=str), encoding="utf-8")

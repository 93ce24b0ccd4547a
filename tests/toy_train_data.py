"""Toy Portrait4D training data for tests: a few clips of small frames with sensible camera labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from avatar.render.camera import view_label
from train.data import TrainDataWriter


def write_toy_clips(root: Path, clips: int = 3, frames: int = 4, size: int = 64, motion_dim: int = 60,
                    seed: int = 0) -> Path:
    """``clips`` clips of ``frames`` smooth colour frames (``size`` square) with a disc as the matte, cameras a
    few degrees around the inference camera, small FLAME parameters and random motions; Parquet, PNG frames."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    disc = ((((xx - 0.5) ** 2 + (yy - 0.5) ** 2) < 0.12) * 255).astype(np.uint8)
    with TrainDataWriter(root, "clips", motion_dim) as writer:
        for c in range(clips):
            base = np.stack([np.sin(6 * xx + c), np.cos(5 * yy + c), xx * yy], -1)
            images = np.stack([((base + 0.1 * k) % 1 * 255).astype(np.uint8) for k in range(frames)])
            labels = np.zeros((frames, 437), np.float32)
            for k in range(frames):
                labels[k, :25] = view_label(float(rng.uniform(-10, 10)), float(rng.uniform(-5, 5)))[0].numpy()
            labels[:, 25:325] = rng.normal(scale=0.3, size=(frames, 300))
            labels[:, 325:425] = rng.normal(scale=0.3, size=(frames, 100))
            labels[:, 425:428] = rng.normal(scale=0.1, size=(frames, 3))
            labels[:, 428] = rng.uniform(0, 0.2, frames)
            writer.add_clip(images, np.stack([disc] * frames), labels,
                            rng.normal(size=(frames, motion_dim)).astype(np.float32), f"clip{c}")
    return root

"""Top CUDA kernels of GPHM render calls (the template avatar of ``python -m avatar.bench gphm``, 100k Gaussians,
512x512), per fast-path mode, from ``torch.profiler``: where the frame time goes on a GPU.

    python scripts/gpu_bench/profile_gphm.py [BATCH] [--calls 5]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from avatar.bench.gphm import _set_mode, driving_signals, template_avatar  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("batch", type=int, nargs="?", default=8)
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--modes", nargs="+", default=["fast-bf16", "fast-bf16-graphs", "fast-fp32"])
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs a CUDA device", file=sys.stderr)
        return 2
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # as the bench and the fit
    try:
        device = torch.device("cuda")
        avatar = template_avatar(100_000, 512, device)
        expressions, poses = driving_signals(args.batch, avatar.signals.config.input_dim, seed=args.batch)
        expressions, poses = expressions.to(device), poses.to(device)
        for mode in args.modes:
            _set_mode(avatar, mode)
            with torch.inference_mode():
                for _ in range(5):
                    avatar.render(expressions, poses, resolution=512)
                torch.cuda.synchronize()
                with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
                    for _ in range(args.calls):
                        avatar.render(expressions, poses, resolution=512)
                    torch.cuda.synchronize()
            print(f"\n=== {mode}, batch {args.batch}, {args.calls} calls ===")
            print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=30, max_name_column_width=90))
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

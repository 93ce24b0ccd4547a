"""Top CUDA kernels of GOHA's per-frame work (released sizes, random weights), per stage of
:func:`avatar.bench.goha.stage_calls`, from ``torch.profiler``: where the batch-1 frame time goes on a GPU and how
much of it the GPU spends idle between kernels (launch-bound stages).

    python scripts/gpu_bench/profile_goha.py [BATCH] [--calls 5] [--tf32 off|conv]

Per stage: wall ms per call (CUDA-synchronised), summed kernel ms per call, the kernel count per call, and the top
kernels by total time. TF32 off by default, as ``python -m avatar.bench goha``. Then ``id_net`` with its depth-wise
convolutions on the channels-last token view (the default) and on an NCHW copy (:func:`dwconv_layouts`).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from avatar.bench.goha import FRONT, cameras, smooth_images, stage_calls  # noqa: E402


def _device_us(event: object) -> float:
    """Self GPU time of a profiler event in microseconds (the attribute's name changed across torch versions)."""
    return float(getattr(event, "self_device_time_total", getattr(event, "self_cuda_time_total", 0.0)))


@torch.no_grad()
def released_model_and_inputs(tf32: str, device: torch.device) -> tuple[Any, Any, torch.Tensor]:
    """GOHA at the released sizes with random weights on ``device`` (fused renderer, TF32 for convolutions only
    when ``tf32 == 'conv'``), a smooth random source encoded once, and one smooth pseudo-render ``(1, 3, S, S)``.
    Exits with status 2 and a message when no CUDA device is visible."""
    if device.type == "cuda" and not torch.cuda.is_available():
        print("needs a CUDA device", file=sys.stderr)
        raise SystemExit(2)
    from avatar.models.goha import GOHA, GOHAConfig

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = tf32 == "conv"
    model = GOHA(GOHAConfig()).to(device).eval().enable_fast_inference("ieee")
    gen = torch.Generator().manual_seed(1)
    s = model.config.image_size
    src_img, pseudo = smooth_images(1, s, gen).to(device), smooth_images(1, s, gen).to(device)
    source = model.encode_source(src_img, torch.tensor([FRONT], device=device), with_coefficients=False)
    return model, source, pseudo


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("batch", type=int, nargs="?", default=1)
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--tf32", choices=["off", "conv"], default="off")
    parser.add_argument("--top", type=int, default=8)
    args = parser.parse_args(argv)
    device = torch.device("cuda")
    model, source, pseudo = released_model_and_inputs(args.tf32, device)
    s = model.config.image_size
    with torch.no_grad():
        stages = stage_calls(model, source.expand(args.batch), cameras(args.batch, device),
                             pseudo.expand(args.batch, -1, -1, -1))
        print(f"GOHA per-frame stages, batch {args.batch}, fp32, TF32 {args.tf32}, {torch.cuda.get_device_name()}, "
              f"torch {torch.__version__}")
        for name, fn in stages.items():
            for _ in range(3):
                fn()
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(args.calls):
                fn()
            torch.cuda.synchronize()
            wall = (time.perf_counter() - t0) / args.calls * 1e3
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(args.calls):
                    fn()
                torch.cuda.synchronize()
            kernels = [e for e in prof.key_averages() if str(getattr(e, "device_type", "")).endswith("CUDA")]
            total = sum(_device_us(e) for e in kernels) / 1e3 / args.calls
            count = sum(e.count for e in kernels) / args.calls
            print(f"\n== {name}: wall {wall:.2f} ms, kernels {total:.2f} ms in {count:.0f} launches "
                  f"(GPU idle {max(0.0, wall - total):.2f} ms)")
            for e in sorted(kernels, key=lambda e: -_device_us(e))[:args.top]:
                print(f"   {_device_us(e) / 1e3 / args.calls:7.3f} ms  x{e.count // args.calls:<4d} "
                      f"{e.key[:110]}")
        print("\n" + dwconv_layouts(model, args.batch, s, device))
    return 0


def dwconv_layouts(model: object, batch: int, size: int, device: torch.device, calls: int = 20) -> str:
    """``id_net`` (MiT-b0, float32) timed with its Mix-FFN depth-wise convolutions on the channels-last view of the
    tokens (:class:`avatar.nn.attention.DWConvTokens`, cuDNN's NHWC kernels) and on a contiguous NCHW copy
    (PyTorch's own depth-wise kernel), and the largest output difference between the two."""
    from avatar.nn import attention

    def nchw(self: attention.DWConvTokens, x: torch.Tensor, H: int, W: int) -> torch.Tensor:  # noqa: N803
        b, n, c = x.shape
        return self.dwconv(x.transpose(1, 2).reshape(b, c, H, W)).flatten(2).transpose(1, 2)

    x = torch.randn(batch, 6, size, size, device=device)
    original = attention.DWConvTokens.forward
    lines, outputs = [], []
    try:
        for name, forward in (("channels-last view (default)", original), ("contiguous NCHW", nchw)):
            attention.DWConvTokens.forward = forward  # type: ignore[method-assign]
            outputs.append(model.id_net(x))  # type: ignore[attr-defined]
            for _ in range(3):
                model.id_net(x)  # type: ignore[attr-defined]
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(calls):
                model.id_net(x)  # type: ignore[attr-defined]
            torch.cuda.synchronize()
            lines.append(f"id_net, depth-wise convolutions on the {name}: "
                         f"{(time.perf_counter() - t0) / calls * 1e3:.2f} ms")
    finally:
        attention.DWConvTokens.forward = original  # type: ignore[method-assign]
    diff = (outputs[0] - outputs[1]).abs().max().item()
    return "\n".join([*lines, f"largest difference between the two: {diff:.2e}"])


if __name__ == "__main__":
    raise SystemExit(main())

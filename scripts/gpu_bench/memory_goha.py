"""Which layers of GOHA's per-frame work set its peak GPU memory, per batch size: every leaf module's call
during :meth:`GOHA.reenact` (released sizes, random weights, fused renderer, source cached), with the memory it
adds above what is allocated when it starts (its outputs, its temporaries and any cuDNN workspace).

    python scripts/gpu_bench/memory_goha.py [--batch-sizes 1 2 4] [--top 10] [--tf32 off|conv]

Per batch: the peak of the whole call (``torch.cuda.max_memory_allocated``, weights included), then the leaf modules
with the largest added peak (largest over the module's calls). Run it again with the cuDNN workspace cap of the
environment (``CUDNN_CONV_WSCAP_DBG=MIB``) to see whether the peaks are convolution workspaces.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from profile_goha import released_model_and_inputs  # noqa: E402

from avatar.bench.goha import cameras  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--tf32", choices=["off", "conv"], default="off")
    args = parser.parse_args(argv)
    device = torch.device("cuda")
    model, source, pseudo = released_model_and_inputs(args.tf32, device)
    cap = os.environ.get("CUDNN_CONV_WSCAP_DBG", "unset")
    print(f"GOHA reenact memory, fp32, TF32 {args.tf32}, CUDNN_CONV_WSCAP_DBG={cap}, cuDNN "
          f"{torch.backends.cudnn.version()}, {torch.cuda.get_device_name()}, torch {torch.__version__}")
    added: dict[str, float] = {}
    starts: dict[str, int] = {}

    def pre(name: str):
        def hook(module: torch.nn.Module, inputs: object) -> None:
            starts[name] = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
        return hook

    def post(name: str):
        def hook(module: torch.nn.Module, inputs: object, output: object) -> None:
            gib = (torch.cuda.max_memory_allocated(device) - starts[name]) / 2**30
            added[name] = max(added.get(name, 0.0), gib)
        return hook

    with torch.no_grad():
        for b in args.batch_sizes:
            src_b, cam_b, pseudo_b = source.expand(b), cameras(b, device), pseudo.expand(b, -1, -1, -1)
            model.reenact(src_b, cam_b, pseudo_render=pseudo_b)  # warm-up: cuDNN plans, Triton kernels
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            base = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            model.reenact(src_b, cam_b, pseudo_render=pseudo_b)
            torch.cuda.synchronize()
            whole = torch.cuda.max_memory_allocated(device) / 2**30
            added.clear()
            handles = []
            for name, module in model.named_modules():
                if not list(module.children()):
                    handles += [module.register_forward_pre_hook(pre(name)),
                                module.register_forward_hook(post(name))]
            model.reenact(src_b, cam_b, pseudo_render=pseudo_b)
            torch.cuda.synchronize()
            for h in handles:
                h.remove()
            print(f"\nbatch {b}: peak {whole:.2f} GiB (allocated before the call {base / 2**30:.2f} GiB); "
                  f"largest added peaks of leaf modules:")
            for name, gib in sorted(added.items(), key=lambda kv: -kv[1])[:args.top]:
                kind = type(model.get_submodule(name)).__name__
                print(f"   {gib:7.3f} GiB  {name} ({kind})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

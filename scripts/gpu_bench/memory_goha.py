"""Which layers of GOHA's per-frame work set its peak memory, per batch size: every submodule's call during
:meth:`GOHA.reenact` (released sizes, random weights, fused renderer and Triton lifting where they run, source
cached), with the memory it adds above what is allocated when it starts.

    python scripts/gpu_bench/memory_goha.py [--device cuda|cpu] [--batch-sizes 1 2 4] [--top 12] [--tf32 off|conv]
        [--sr-frames N] [--memory-cap-gib G]

Two counts per module:

* ``allocator`` (CUDA only): ``torch.cuda.max_memory_allocated`` above the memory allocated at the module's start:
  its outputs, its operators' temporaries and any cuDNN workspace;
* ``tensors``: :func:`avatar.bench.live_memory.module_peaks`, the bytes of the tensors it creates that are alive
  at once (no workspace, no allocator rounding).

On the CPU (``--device cpu``) the tensor count is the only one, and it estimates the GPU's: the fused renderer's
own code runs, with every tensor it allocates, but its Triton kernel launches are skipped
(:func:`skipped_kernels`; the values are then meaningless, the sizes are not), and the lifting is the chunked
``cdist`` (256 cells a block, 16 MiB a frame; the GPU's Triton lifting holds no distance block).

``allocator - tensors`` is the memory the operators hold inside their kernels: cuDNN convolution workspaces. PyTorch
sets no limit on them: without the autotuner it runs the first engine of cuDNN's heuristics whose workspace can be
allocated (``try_configs`` in ATen's ``Conv_v8.cpp``), so a GPU with free memory gets the large-workspace engines.
``--memory-cap-gib G`` chooses the engines under a memory limit: the warm-up call runs with the process capped at G
GiB in all (:func:`avatar.bench.memory_cap.engines_under_cap`), so that a workspace above it fails to allocate and
the next engine is tried; the cached engine choices are kept, and the cap lifted, for the measured calls. The
source is encoded once before, uncapped, and its batch-1 convolutions may share shapes with the per-frame ones at
batch 1; at other batch sizes every engine is chosen under the cap.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from profile_goha import released_model_and_inputs  # noqa: E402

from avatar.bench.goha import cameras  # noqa: E402
from avatar.bench.live_memory import module_peaks  # noqa: E402
from avatar.bench.memory_cap import engines_under_cap  # noqa: E402


def allocator_peaks(model: torch.nn.Module, call: object, device: torch.device) -> dict[str, float]:
    """GiB each submodule adds to ``torch.cuda.max_memory_allocated`` above the memory allocated at its start
    (largest over its calls), during one ``call()``. The allocator keeps one peak counter, so at every module
    boundary its peak is folded into the running peaks of the modules open at that moment and reset."""
    added: dict[str, float] = {}
    open_modules: list[list] = []  # [name, allocated at its start, its running peak], outermost first

    def fold() -> None:
        peak = torch.cuda.max_memory_allocated(device)
        for entry in open_modules:
            entry[2] = max(entry[2], peak)
        torch.cuda.reset_peak_memory_stats(device)

    def pre(name: str):  # noqa: ANN202
        def hook(module: torch.nn.Module, inputs: object) -> None:
            fold()
            allocated = torch.cuda.memory_allocated(device)
            open_modules.append([name, allocated, allocated])
        return hook

    def post(name: str):  # noqa: ANN202
        def hook(module: torch.nn.Module, inputs: object, output: object) -> None:
            fold()
            _, start, peak = open_modules.pop()
            added[name] = max(added.get(name, 0.0), (peak - start) / 2**30)
        return hook

    handles = []
    for name, module in model.named_modules():
        if name:
            handles += [module.register_forward_pre_hook(pre(name)), module.register_forward_hook(post(name))]
    try:
        call()  # type: ignore[operator]
        torch.cuda.synchronize(device)
    finally:
        for handle in handles:
            handle.remove()
    return added


@contextlib.contextmanager
def skipped_kernels() -> Iterator[None]:
    """The fused renderer on the CPU without Triton: its code and allocations as on a GPU, its two kernel launches
    replaced by nothing (outputs left as allocated). For counting memory only."""
    from avatar.render import fused

    class NoLaunch:
        def __getitem__(self, grid: object) -> Callable[..., None]:
            return lambda *args, **kwargs: None

    kernels = SimpleNamespace(triplane_field_kernel=NoLaunch(), ray_march_kernel=NoLaunch())
    with mock.patch.object(fused, "_kernels", lambda: kernels), \
            mock.patch.object(fused, "fused_available", lambda device: True):
        yield


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--tf32", choices=["off", "conv"], default="off")
    parser.add_argument("--sr-frames", type=int, default=None, help="enable_fast_inference(sr_frames=N)")
    parser.add_argument("--memory-cap-gib", type=float, default=None,
                        help="choose cuDNN's engines in a warm-up call capped at this many GiB in all (CUDA)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    model, source, pseudo = released_model_and_inputs(args.tf32, device)
    cuda = device.type == "cuda"
    with contextlib.ExitStack() as stack:
        if not cuda:
            stack.enter_context(skipped_kernels())
        model.enable_fast_inference("ieee", sr_frames=args.sr_frames, fused_lifting=cuda)
        return probe(model, source, pseudo, args, device)


def probe(model: Any, source: Any, pseudo: torch.Tensor, args: argparse.Namespace, device: torch.device) -> int:
    """The per-batch report of :func:`main`."""
    cuda = device.type == "cuda"
    where = (f"{torch.cuda.get_device_name()}, cuDNN {torch.backends.cudnn.version()}" if cuda
             else "CPU (fused renderer's kernels skipped: an estimate of the GPU's tensors)")
    print(f"GOHA reenact memory, fp32, TF32 {args.tf32}, renderer {'fused ' + model.fused_rendering if model.fused_rendering else 'PyTorch'}, "
          f"sr_frames {args.sr_frames}, cuDNN engines chosen "
          f"{'under ' + format(args.memory_cap_gib, 'g') + ' GiB' if args.memory_cap_gib else 'without a cap'}, "
          f"{where}, torch {torch.__version__}")
    weights = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()]) / 2**30
    print(f"weights and buffers: {weights:.3f} GiB")
    with torch.no_grad():
        for b in args.batch_sizes:
            src_b, cam_b, pseudo_b = source.expand(b), cameras(b, device), pseudo.expand(b, -1, -1, -1)
            inputs = [t for t in vars(src_b).values() if isinstance(t, torch.Tensor)] + [cam_b, pseudo_b]

            def call(src_b: object = src_b, cam_b: torch.Tensor = cam_b, pseudo_b: torch.Tensor = pseudo_b) -> object:
                return model.reenact(src_b, cam_b, pseudo_render=pseudo_b)

            allocator: dict[str, float] = {}
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.empty_cache()
                # warm-up (cuDNN engines, Triton kernels), under the cap when there is one
                if engines_under_cap(call, device, args.memory_cap_gib) is None:
                    print(f"\nbatch {b}: does not fit under {args.memory_cap_gib} GiB")
                    continue
                torch.cuda.synchronize()
                torch.cuda.empty_cache()
                base = torch.cuda.memory_allocated(device)
                torch.cuda.reset_peak_memory_stats(device)
                call()
                torch.cuda.synchronize()
                whole = torch.cuda.max_memory_allocated(device) / 2**30
                print(f"\nbatch {b}: peak {whole:.2f} GiB (allocated before the call {base / 2**30:.2f} GiB)")
                allocator = allocator_peaks(model, call, device)
            live, tensors = module_peaks(model, call, inputs, record_tensors=True)
            print(f"{'' if cuda else chr(10)}batch {b}: tensors alive at once at most {live.peak_bytes / 2**30:.3f} "
                  f"GiB above the weights and inputs, in {' > '.join(live.peak_stack) or 'reenact'}; largest there:")
            for size, what in live.peak_tensors[:6]:
                print(f"   {size / 2**20:8.1f} MiB  {what}")
            leaves = {n for n, m in model.named_modules() if n and not list(m.children())}
            ranked = sorted(set(tensors) | set(allocator), key=lambda n: -max(allocator.get(n, 0.0),
                                                                              tensors.get(n, 0) / 2**30))
            print("| module | kind | allocator GiB | tensors GiB | allocator - tensors GiB |\n|---|---|---|---|---|")
            for name in ranked[:args.top]:
                t = tensors.get(name, 0) / 2**30
                a = allocator.get(name)
                kind = type(model.get_submodule(name)).__name__ + (" (leaf)" if name in leaves else "")
                print(f"| {name} | {kind} | {'-' if a is None else f'{a:.3f}'} | {t:.3f} | "
                      f"{'-' if a is None else f'{a - t:.3f}'} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Side-by-side check of GOHA's SegFormer branches (``template_net``, ``id_net``, ``expr_net``) against the official
construction, on CPU in float32 with random weights.

    python scripts/compare_official_goha_segformer.py --official /path/to/GOHA --extra-path /tmp/tfsite

What it does:

1. reads ``src/models/model_s2.py`` of a GOHA checkout (never part of this repository) and takes, from
   ``Model.__init__``, every top-level assignment to ``self.template_net`` / ``self.id_net`` / ``self.expr_net`` and
   their sub-modules (the ``from_pretrained`` calls, the ``nn.Identity()`` replacements of the decode head and the
   new first patch embeddings). They run as written, except that ``from_pretrained`` builds transformers'
   ``SegformerForSemanticSegmentation`` from a ``SegformerConfig`` with the values of
   ``nvidia/segformer-b0-finetuned-ade-512-512`` (nothing is downloaded). The official code used transformers 4.x
   (its module names are in the checkpoint); ``pip install --target /tmp/tfsite "transformers==4.36.2"`` and
   ``--extra-path /tmp/tfsite`` provide it (5.x renamed the modules, so it is refused);
2. fills every official tensor with random values (LayerNorm weights around 1, so each layer matters), puts the
   three states under GOHA's prefixes, converts them with :func:`avatar.models.goha.segformer.official_to_native`
   and loads each branch strictly into :class:`~avatar.models.goha.segformer.SegformerBranch`; checks that
   :func:`native_to_official` gives the official state back exactly;
3. feeds the same ImageNet-normalised inputs (3 channels; 6 for ``id_net``) to both, as GOHA does
   (``pixel_values=..., output_hidden_states=True``, ``.logits``), and prints the max abs difference.

Exit status 0 when every difference is below ``--tol`` (1e-5), 1 otherwise, 2 when no checkout is given.
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
import types
from pathlib import Path

import torch
from torch import Tensor, nn

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

MODEL_ID = "nvidia/segformer-b0-finetuned-ade-512-512"
BRANCHES = ("template_net", "id_net", "expr_net")
# config.json of MODEL_ID (the values that shape the network; num_labels 150 only sizes the dropped classifier)
B0_CONFIG = dict(num_channels=3, num_encoder_blocks=4, depths=[2, 2, 2, 2], sr_ratios=[8, 4, 2, 1],
                 hidden_sizes=[32, 64, 160, 256], patch_sizes=[7, 3, 3, 3], strides=[4, 2, 2, 2],
                 num_attention_heads=[1, 2, 5, 8], mlp_ratios=[4, 4, 4, 4], hidden_act="gelu",
                 hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout_prob=0.1,
                 drop_path_rate=0.1, layer_norm_eps=1e-6, decoder_hidden_size=256, reshape_last_stage=True,
                 num_labels=150)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _model_s2(official: Path) -> Path:
    for candidate in (official / "src" / "models" / "model_s2.py", official / "models" / "model_s2.py"):
        if candidate.is_file():
            return candidate
    raise SystemExit(f"no src/models/model_s2.py under {official}")


def _rooted_at_branch(target: ast.expr) -> bool:
    """``self.<branch>`` or an attribute / item chain below it."""
    node = target
    while isinstance(node, ast.Attribute | ast.Subscript):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self"
                and node.attr in BRANCHES):
            return True
        node = node.value
    return False


def official_branch_statements(model_s2: Path) -> list[ast.stmt]:
    """The top-level assignments of ``Model.__init__`` that build or modify the three SegFormer branches."""
    tree = ast.parse(model_s2.read_text(), filename=str(model_s2))
    for cls in tree.body:
        if isinstance(cls, ast.ClassDef) and cls.name == "Model":
            for fn in cls.body:
                if isinstance(fn, ast.FunctionDef) and fn.name == "__init__":
                    return [s for s in fn.body
                            if isinstance(s, ast.Assign) and any(_rooted_at_branch(t) for t in s.targets)]
    raise SystemExit(f"no Model.__init__ in {model_s2}")


def build_official(model_s2: Path) -> dict[str, nn.Module]:
    """Run the official branch statements with ``from_pretrained`` building the b0 network from its config."""
    import transformers
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    if int(transformers.__version__.split(".")[0]) >= 5:
        raise SystemExit(f"transformers {transformers.__version__}: GOHA's module names need transformers 4.x")

    class _Offline:
        @staticmethod
        def from_pretrained(name: str) -> nn.Module:
            if name != MODEL_ID:
                raise SystemExit(f"unexpected pretrained id {name!r}")
            return SegformerForSemanticSegmentation(SegformerConfig(**B0_CONFIG))

    statements = official_branch_statements(model_s2)
    print(f"official statements ({model_s2}):")
    for s in statements:
        print("   ", ast.unparse(s))
    module = ast.Module(body=statements, type_ignores=[])
    holder = types.SimpleNamespace()
    exec(compile(module, str(model_s2), "exec"), {"nn": nn, "torch": torch,  # noqa: S102 - the official lines
                                                  "SegformerForSemanticSegmentation": _Offline}, {"self": holder})
    return {name: getattr(holder, name).eval() for name in BRANCHES}


@torch.no_grad()
def randomize_(module: nn.Module, generator: torch.Generator) -> None:
    """Random weights for every tensor: fan-in-scaled matrices / kernels, biases ~ 0.2 N, LayerNorm ~ 1 + 0.2 N."""
    for name, p in module.named_parameters():
        noise = torch.randn(p.shape, generator=generator)
        if p.ndim >= 2:
            p.copy_(noise / p[0].numel() ** 0.5)
        elif name.endswith("weight"):
            p.copy_(1.0 + 0.2 * noise)
        else:
            p.copy_(0.2 * noise)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", type=Path, default=os.environ.get("GOHA_OFFICIAL"),
                        help="GOHA checkout (or its src/); default $GOHA_OFFICIAL")
    parser.add_argument("--extra-path", type=Path, action="append", default=[],
                        help="put DIR first on sys.path (a pip --target folder with transformers 4.x)")
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tol", type=float, default=1e-5)
    parser.add_argument("--float64", action="store_true", help="also compare both in float64 (exact maths)")
    args = parser.parse_args(argv)
    if args.official is None:
        print("give --official /path/to/GOHA (or set GOHA_OFFICIAL)", file=sys.stderr)
        return 2
    for extra in reversed(args.extra_path):
        sys.path.insert(0, str(extra))

    from avatar.models.goha.segformer import (
        SegformerBranch,
        SegformerBranchConfig,
        native_to_official,
        official_to_native,
    )

    torch.set_num_threads(max(1, min(8, os.cpu_count() or 1)))
    official = build_official(_model_s2(args.official))
    gen = torch.Generator().manual_seed(args.seed)
    full_state: dict[str, Tensor] = {}
    for name, branch in official.items():
        randomize_(branch, gen)
        full_state.update({f"{name}.{k}": v for k, v in branch.state_dict().items()})

    converted = official_to_native(full_state)
    ours: dict[str, SegformerBranch] = {}
    for name, branch in official.items():
        in_channels = branch.segformer.encoder.patch_embeddings[0].proj.in_channels
        model = SegformerBranch(SegformerBranchConfig().with_in_channels(in_channels)).eval()
        prefix = f"{name}."
        model.load_state_dict({k[len(prefix):]: v for k, v in converted.items() if k.startswith(prefix)},
                              strict=True)
        back = native_to_official(model.state_dict())
        reference = branch.state_dict()
        if set(back) != set(reference) or any(not torch.equal(back[k], reference[k]) for k in reference):
            print(f"{name}: native_to_official does not give the official state back")
            return 1
        ours[name] = model
        print(f"{name}: {len(reference)} official keys -> {len(model.state_dict())} ours, "
              f"{sum(p.numel() for p in model.parameters()):,} parameters, in_channels {in_channels}")

    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    size = args.image_size
    inputs: dict[str, Tensor] = {}
    for name in BRANCHES:
        # GOHA normalises each 3-channel image; id_net gets two of them concatenated
        repeats = ours[name].config.in_channels // 3
        images = torch.rand((args.batch, 3 * repeats, size, size), generator=gen) * 2 - 1
        inputs[name] = ((images + 1) / 2 - mean.repeat(1, repeats, 1, 1)) / std.repeat(1, repeats, 1, 1)

    worst = 0.0
    for dtype in (torch.float32, torch.float64) if args.float64 else (torch.float32,):
        for name in BRANCHES:
            pixel_values = inputs[name].to(dtype)
            with torch.no_grad():
                ref = official[name].to(dtype)(pixel_values=pixel_values, output_hidden_states=True).logits
                out = ours[name].to(dtype)(pixel_values)
            if ref.shape != out.shape:
                print(f"{name}: shape {tuple(out.shape)} != official {tuple(ref.shape)}")
                return 1
            diff = (out - ref).abs().max().item()
            if dtype == torch.float32:
                worst = max(worst, diff)
            print(f"{name} [{str(dtype).removeprefix('torch.')}]: input {tuple(pixel_values.shape)} -> "
                  f"{tuple(out.shape)}, max |official| {ref.abs().max().item():.4f}, max abs diff {diff:.3e}")
    ok = worst < args.tol
    print(f"max abs difference (float32) {worst:.3e} ({'OK' if ok else 'FAIL'}, tol {args.tol:g})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

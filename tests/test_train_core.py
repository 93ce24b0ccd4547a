"""train.core: the shared training loop (phases, lazy regularisation, EMA, checkpoints, resume, signals, hooks).

Toy GAN on the CPU: a 2-layer generator and discriminator on random points, with the four EG3D phases (Gmain,
Greg every 4 steps, Dmain, Dreg = R1 every 8 steps). Subprocess tests run this file's :func:`toy_main` through
``python`` or ``torchrun`` (gloo, 2 CPU processes).
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from avatar.errors import ConfigError, InputNotFoundError
from train.core import (
    EMA,
    AdamConfig,
    CheckpointConfig,
    DataConfig,
    EmaConfig,
    ExportConfig,
    Hooks,
    InfiniteSampler,
    LogConfig,
    LoopState,
    ParamGroupRule,
    PhaseContext,
    TrainConfig,
    Trainer,
    build_adam,
    capture_rng_state,
    ema_beta,
    hub_push,
    isolated_rng,
    lazy_phases,
    make_loader,
    parse_config,
    reduce_gradients,
    restore_rng_state,
    run_phase,
)

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
TORCHRUN = Path(sys.executable).with_name("torchrun")


# ---------------------------------------------------------------------------------------------------------
# the toy recipe
@dataclass(frozen=True)
class ToyConfig(TrainConfig):
    """A toy GAN recipe on top of TrainConfig."""

    dim: int = 4
    """Size of the points."""
    dataset_size: int = 50
    """Number of real points."""
    noise: bool = True
    """Draw from Python, NumPy and torch generators inside the losses (exercises the RNG restore)."""
    g_reg_interval: int = 4
    """Lazy regularisation interval of G."""
    d_reg_interval: int = 8
    """Lazy regularisation interval of D (R1)."""
    step_sleep: float = 0.0
    """Seconds to sleep before each step (lets a test send a signal mid-run)."""
    fail_push: bool = False
    """Make the push hook raise."""


class ToyG(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, 16), nn.LeakyReLU(0.2), nn.Linear(16, dim))
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.calls += 1
        return self.net(z)


class ToyD(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)


class ToyData(Dataset):
    """Fixed points plus a random jitter (drawn per sample: seeded by its stream position)."""

    def __init__(self, size: int, dim: int) -> None:
        self.base = torch.randn(size, dim, generator=torch.Generator().manual_seed(1234))

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"real": self.base[index] + 0.1 * torch.randn(self.base.shape[1]),
                "z": torch.randn(self.base.shape[1]), "index": torch.tensor(index)}


class ToyLoss:
    def __init__(self, G: ToyG, D: ToyD, noise: bool) -> None:
        self.G, self.D, self.noise = G, D, noise

    def _jitter(self, x: torch.Tensor) -> torch.Tensor:
        if not self.noise:
            return x
        scale = 0.01 * (1 + random.random()) * (1 + float(np.random.rand()))
        return x + scale * torch.randn_like(x)

    def g_main(self, batch: dict, ctx: PhaseContext) -> torch.Tensor:
        loss = F.softplus(-self.D(self.G(self._jitter(batch["z"]))))
        ctx.log("Loss/G/loss", loss)
        return loss.mean()

    def g_reg(self, batch: dict, ctx: PhaseContext) -> torch.Tensor:
        z = batch["z"]
        reg = (self.G(z + 0.05) - self.G(self._jitter(z))).square().mean(1)
        ctx.log("Loss/G/reg", reg)
        return reg.mean()

    def d_main(self, batch: dict, ctx: PhaseContext) -> None:
        with torch.no_grad():
            fake = self.G(self._jitter(batch["z"]))
        loss_fake = F.softplus(self.D(fake))
        ctx.backward(loss_fake.mean())
        loss_real = F.softplus(-self.D(batch["real"]))
        ctx.backward(loss_real.mean())
        ctx.log("Loss/D/loss", loss_fake + loss_real)
        return None

    def d_reg(self, batch: dict, ctx: PhaseContext) -> torch.Tensor:
        real = batch["real"].detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(self.D(real).sum(), real, create_graph=True)
        penalty = grad.square().sum(1)
        ctx.log("Loss/r1_penalty", penalty)
        return penalty.mean() * 0.5


def toy_setup(trainer: Trainer, cfg: ToyConfig) -> tuple[list, EMA, ToyData, ToyG, ToyD]:
    G, D = ToyG(cfg.dim).to(trainer.device), ToyD(cfg.dim).to(trainer.device)
    loss = ToyLoss(G, D, cfg.noise)
    adam = AdamConfig(lr=1e-2, betas=(0.5, 0.99), eps=1e-8)
    phases = [*lazy_phases("G", G, main=loss.g_main, reg=loss.g_reg, reg_interval=cfg.g_reg_interval, adam=adam,
                           groups=(ParamGroupRule("head", lambda n: n.startswith("net.2"), 2.5),)),
              *lazy_phases("D", D, main=loss.d_main, reg=loss.d_reg, reg_interval=cfg.d_reg_interval, adam=adam)]
    return phases, EMA(G, cfg.ema), ToyData(cfg.dataset_size, cfg.dim), G, D


def toy_hooks(cfg: ToyConfig) -> Hooks:
    def on_step_start(state: LoopState) -> None:
        if cfg.step_sleep:
            time.sleep(cfg.step_sleep)

    def images(module: nn.Module, state: LoopState) -> dict:
        z = torch.randn(6, cfg.dim, device=next(module.parameters()).device)  # the loop restores the generators
        points = module(z)
        return {"fakes": points[:, :3, None, None].expand(6, 3, 8, 8).tanh(), "grey": (points[:, :1, None, None]
                                                                                     .expand(6, 1, 4, 4).tanh(), 3)}

    def export(module: nn.Module, directory: Path) -> None:
        torch.save(module.state_dict(), directory / "weights.pt")
        (directory / "config.json").write_text("{}")

    def push(directory: Path, state: LoopState) -> None:
        if cfg.fail_push:
            raise RuntimeError("the Hub is unreachable")

    return Hooks(on_step_start=on_step_start, images=images, export=export, push=push)


def toy_config(tmp: Path, **changes: object) -> ToyConfig:
    values: dict = dict(out_dir=str(tmp), batch_size=8, max_steps=12, cpu=True, seed=3,
                        checkpoint=CheckpointConfig(every_steps=0, keep_last=2),
                        log=LogConfig(tick_kimg=0.024, trackers=("jsonl",), progress_bar=False),
                        export=ExportConfig(every_steps=0), ema=EmaConfig(kimg=0.02, rampup=0.5),
                        data=DataConfig(num_workers=0))
    values.update(changes)
    return ToyConfig(**values)


def run_toy(cfg: ToyConfig, hooks: Hooks | None = None):
    trainer = Trainer(cfg)
    phases, ema, data, G, D = toy_setup(trainer, cfg)
    result = trainer.fit(phases, data=data, ema=ema, hooks=hooks if hooks is not None else toy_hooks(cfg))
    return result, phases, ema, G, D


def toy_main(argv: list[str]) -> int:
    """The toy recipe as a script: ``python -c ... toy_main(sys.argv[1:])`` or under torchrun."""
    from avatar.logs import setup_logging

    setup_logging()
    cfg = parse_config(ToyConfig, argv, prog="toy")
    result, *_ = run_toy(cfg)
    print(json.dumps({"reason": result.reason, "step": result.state.step, "checkpoint": str(result.checkpoint),
                      "push_failures": result.push_failures}), flush=True)
    return result.exit_code


SCRIPT = ("import sys; sys.path[:0] = [{root!r}, {tests!r}]; from test_train_core import toy_main; "
          "sys.exit(toy_main(sys.argv[1:]))").format(root=str(ROOT), tests=str(ROOT / "tests"))


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    env.pop("WORLD_SIZE", None)
    return env


def script_args(out: Path, *extra: str) -> list[str]:
    return ["--out-dir", str(out), "--batch-size", "8", "--cpu", "--seed", "3", "--checkpoint.keep-last", "2",
            "--log.tick-kimg", "0.024", "--log.trackers", "jsonl", "--no-log.progress-bar",
            "--ema.kimg", "0.02", "--ema.rampup", "0.5", "--data.num-workers", "0", *extra]


def weights(checkpoint: Path) -> dict[str, dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    return {name: load_file(checkpoint / f"{name}.safetensors") for name in ("model", "model_1", "model_2")}


def modules_state(*modules: nn.Module) -> list[dict[str, torch.Tensor]]:
    return [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in modules]


def assert_equal_states(a: list[dict], b: list[dict]) -> None:
    for sa, sb in zip(a, b, strict=True):
        assert sa.keys() == sb.keys()
        for key in sa:
            assert torch.equal(sa[key], sb[key]), key


def read_stats(out: Path) -> list[dict]:
    path = out / "logs" / "train" / "stats.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


# ---------------------------------------------------------------------------------------------------------
# lazy regularisation, EMA, gradients
def test_lazy_regularization_matches_the_official_numbers() -> None:
    model = nn.ModuleDict({"encoder_canonical": nn.ModuleDict({"attn2": nn.Linear(2, 2), "other": nn.Linear(2, 2)}),
                           "bn": nn.BatchNorm1d(2)})
    adam = AdamConfig(lr=1e-4, betas=(0.9, 0.999), eps=1e-5)

    opt16 = build_adam(model, adam, reg_interval=16, exclude=lambda n: "bn" in n)
    (group,) = opt16.param_groups
    assert round(group["lr"], 8) == 9.412e-5 and len(group["params"]) == 4  # the 'bn' parameters are left out
    assert tuple(round(b, 5) for b in group["betas"]) == (0.90560, 0.99906)
    assert group["eps"] == 1e-5

    cross = ParamGroupRule("cross", lambda n: "encoder_canonical" in n and "attn2" in n, lr_scale=2.5)
    opt4 = build_adam(model, adam, reg_interval=4, groups=(cross,), exclude=lambda n: "bn" in n)
    lrs = {g["name"]: g["lr"] for g in opt4.param_groups}
    assert lrs["base"] == pytest.approx(8.0e-5, rel=1e-12) and lrs["cross"] == pytest.approx(2.0e-4, rel=1e-12)
    for g in opt4.param_groups:
        assert tuple(round(b, 5) for b in g["betas"]) == (0.91917, 0.99920)

    plain = build_adam(model, adam, reg_interval=None)  # no regularisation: no correction
    assert plain.param_groups[0]["lr"] == 1e-4 and plain.param_groups[0]["betas"] == (0.9, 0.999)

    phases = lazy_phases("G", model, main=lambda b, c: None, reg=lambda b, c: None, reg_interval=4, adam=adam)
    assert [(p.name, p.interval) for p in phases] == [("Gmain", 1), ("Greg", 4)]
    assert phases[0].optimizer is phases[1].optimizer
    assert phases[0].optimizer.param_groups[0]["lr"] == pytest.approx(8.0e-5)
    (both,) = lazy_phases("D", model, main=lambda b, c: None, reg=lambda b, c: None, reg_interval=None, adam=adam)
    assert (both.name, both.interval, both.optimizer.param_groups[0]["lr"]) == ("Dboth", 1, 1e-4)


def test_ema_beta_and_rampup() -> None:
    assert ema_beta(32, 10**9, 10.0, 0.05) == pytest.approx(0.99778, abs=5e-6)
    assert ema_beta(32, 10**9, 10.0, None) == pytest.approx(0.5 ** (32 / 10_000))
    assert ema_beta(32, 0, 10.0, 0.05) == 0.0  # the first step copies
    assert ema_beta(32, 1000, 10.0, 0.05) == pytest.approx(0.5 ** (32 / 50))  # ramp-up: min(10000, 1000 * 0.05)
    assert ema_beta(32, 400_000, 10.0, 0.05) == pytest.approx(0.5 ** (32 / 10_000))  # ramp-up over

    G = ToyG(3)
    ema = EMA(G, EmaConfig(kimg=0.1, rampup=None), copy_attributes=("resolution",))
    G.resolution = 128
    assert not any(p.requires_grad for p in ema.module.parameters()) and not ema.module.training
    before = [p.detach().clone() for p in ema.module.parameters()]
    with torch.no_grad():
        for p in G.parameters():
            p.add_(1.0)
        G.calls.fill_(7)
    beta = ema.update(batch_size=10, cur_nimg=5000)
    assert beta == pytest.approx(0.5 ** (10 / 100))
    for p_ema, p, old in zip(ema.module.parameters(), G.parameters(), before, strict=True):
        assert torch.equal(p_ema, p.detach().lerp(old, beta))
    assert ema.module.calls.item() == 7 and ema.module.resolution == 128


def test_reduce_gradients_replaces_nan_and_inf() -> None:
    p = nn.Parameter(torch.zeros(4))
    q = nn.Parameter(torch.zeros(2))  # no gradient: left alone, Adam skips it
    p.grad = torch.tensor([float("nan"), float("inf"), -float("inf"), 1.5])
    reduce_gradients([p, q], _SingleProcess())
    assert p.grad.tolist() == [0.0, 1e5, -1e5, 1.5] and q.grad is None


class _SingleProcess:
    num_processes = 1
    device = torch.device("cpu")

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()


def test_one_step_of_each_phase_trains_only_its_module() -> None:
    torch.manual_seed(0)
    G, D = ToyG(4), ToyD(4)
    loss = ToyLoss(G, D, noise=False)
    phases = [*lazy_phases("G", G, main=loss.g_main, reg=loss.g_reg, reg_interval=4),
              *lazy_phases("D", D, main=loss.d_main, reg=loss.d_reg, reg_interval=16)]
    G.requires_grad_(False)
    D.requires_grad_(False)
    batch = {"z": torch.randn(6, 4), "real": torch.randn(6, 4)}
    logged: dict[str, list] = {}
    gains = {}
    for phase in phases:
        original = phase.loss

        def spy(b, ctx, original=original):
            gains[ctx.phase] = ctx.gain
            return original(b, ctx)

        phase.loss = spy
        g_before, d_before = modules_state(G, D)
        run_phase(phase, batch, LoopState(), _SingleProcess(), lambda k, v: logged.setdefault(k, []).append(v))
        g_after, d_after = modules_state(G, D)
        changed_g = any(not torch.equal(g_before[k], g_after[k]) for k in g_before if k != "calls")
        changed_d = any(not torch.equal(d_before[k], d_after[k]) for k in d_before)
        assert (changed_g, changed_d) == ((True, False) if phase.name.startswith("G") else (False, True)), phase.name
        assert not any(p.requires_grad for p in [*G.parameters(), *D.parameters()])
    assert gains == {"Gmain": 1.0, "Greg": 4.0, "Dmain": 1.0, "Dreg": 16.0}
    assert {"Loss/Gmain", "Loss/Greg", "Loss/Dreg", "Loss/G/loss", "Loss/D/loss", "Loss/r1_penalty"} <= set(logged)


def test_phase_schedule_follows_the_intervals(tmp_path: Path) -> None:
    cfg = toy_config(tmp_path, max_steps=9, g_reg_interval=4, d_reg_interval=8)
    trainer = Trainer(cfg)
    phases, ema, data, *_ = toy_setup(trainer, cfg)
    ran: dict[str, list[int]] = {}
    for phase in phases:
        original = phase.loss

        def spy(b, ctx, original=original):
            ran.setdefault(ctx.phase, []).append(ctx.state.step)
            return original(b, ctx)

        phase.loss = spy
    result = trainer.fit(phases, data=data, ema=ema)
    assert result.reason == "done" and result.state.step == 9 and result.state.cur_nimg == 72
    assert ran == {"Gmain": list(range(9)), "Greg": [0, 4, 8], "Dmain": list(range(9)), "Dreg": [0, 8]}


# ---------------------------------------------------------------------------------------------------------
# data position, generators
def _official_infinite_sampler(size: int, rank: int, num_replicas: int, seed: int, window_size: float, steps: int,
                               ) -> list[int]:
    """Upstream ``misc.InfiniteSampler.__iter__`` (torch_utils/misc.py), as it is written there."""
    order = np.arange(size)
    rnd = np.random.RandomState(seed)
    rnd.shuffle(order)
    window = int(np.rint(order.size * window_size))
    out, idx = [], 0
    while len(out) < steps:
        i = idx % order.size
        if idx % num_replicas == rank:
            out.append(int(order[i]))
        if window >= 2:
            j = (i - rnd.randint(window)) % order.size
            order[i], order[j] = order[j], order[i]
        idx += 1
    return out


def test_infinite_sampler_is_upstreams_order_and_resumes() -> None:
    for size, rank, reps, seed in ((13, 0, 1, 0), (57, 1, 4, 3), (5000, 2, 3, 9)):
        ref = _official_infinite_sampler(size, rank, reps, seed, 0.5, 9000)
        got = list(islice(InfiniteSampler(range(size), rank, reps, seed=seed), 9000))
        assert [i for i, _ in got] == ref
        assert [p for _, p in got] == list(range(rank, 9000 * reps, reps))  # global positions, unique over ranks
        start = got[4321][1]  # resume at a global position (past a block of draws): the same stream from there on
        resumed = list(islice(InfiniteSampler(size, rank, reps, seed=seed, start=start), 100))
        assert resumed == got[4321:4421]


def test_infinite_sampler_shards_one_stream_and_seeks() -> None:
    one = list(islice(InfiniteSampler(10, seed=5), 40))
    assert [p for _, p in one] == list(range(40))
    ranks = [list(islice(InfiniteSampler(10, rank=r, num_replicas=2, seed=5), 20)) for r in range(2)]
    assert [x for pair in zip(*ranks, strict=True) for x in pair] == one  # interleaved = the one stream
    assert list(islice(InfiniteSampler(10, seed=5, start=23), 15)) == one[23:38]
    assert list(islice(InfiniteSampler(10, rank=0, num_replicas=2, seed=5, start=23), 5)) == one[24:34:2]
    assert [i for i, _ in islice(InfiniteSampler(4, shuffle=False, start=3), 6)] == [3, 0, 1, 2, 3, 0]
    tiny = _official_infinite_sampler(2, 0, 1, 1, 0.5, 4)  # window rint(1) = 1 < 2: upstream never swaps
    assert list(islice(InfiniteSampler(2, seed=1, start=1), 3)) == list(zip(tiny[1:], range(1, 4), strict=True))
    for bad in ({"rank": 2, "num_replicas": 2}, {"window_size": 1.5}, {"start": -1}):
        with pytest.raises(ValueError):
            InfiniteSampler(10, **bad)
    with pytest.raises(ValueError, match="empty"):
        InfiniteSampler([])


class KeyedToyData(ToyData):
    """ToyData read with ``(index, position)`` keys (as ``ClipPairDataset``)."""

    takes_positions = True

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:  # type: ignore[override]
        index, position = key
        return {**super().__getitem__(index), "position": torch.tensor(position)}


def test_seeded_samples_do_not_depend_on_workers_or_start(tmp_path: Path) -> None:
    data = ToyData(12, 3)
    a = make_loader(data, 4, start=0, seed=1, num_workers=0)
    b = make_loader(data, 4, start=0, seed=1, num_workers=2)
    c = make_loader(data, 4, start=8, seed=1, num_workers=0)
    state = torch.get_rng_state()
    first = [batch for _, batch in zip(range(5), a, strict=False)]
    assert torch.equal(torch.get_rng_state(), state)  # loading never touches the global generator
    workers = [batch for _, batch in zip(range(5), b, strict=False)]
    later = [batch for _, batch in zip(range(3), c, strict=False)]
    for x, y in zip(first, workers, strict=True):
        assert torch.equal(x["real"], y["real"]) and torch.equal(x["z"], y["z"])
    for x, y in zip(first[2:], later, strict=True):
        assert torch.equal(x["real"], y["real"]) and torch.equal(x["index"], y["index"])
    order = [i for i, _ in islice(InfiniteSampler(12, seed=1), 20)]
    assert torch.cat([x["index"] for x in first]).tolist() == order  # the sampler's (official) order
    # a dataset that takes positions gets (index, position) keys; seed_samples=False only unpacks the keys
    keyed = [batch for _, batch in zip(range(3), make_loader(KeyedToyData(12, 3), 4, start=8, seed=1), strict=False)]
    for x, y in zip(later, keyed, strict=True):
        assert torch.equal(x["real"], y["real"]) and torch.equal(x["index"], y["index"])
    assert torch.cat([y["position"] for y in keyed]).tolist() == list(range(8, 20))
    plain = next(iter(make_loader(data, 4, start=0, seed=1, seed_samples=False)))
    assert torch.equal(plain["index"], first[0]["index"]) and not torch.equal(plain["z"], first[0]["z"])


def test_rng_state_round_trips_through_json() -> None:
    state = json.loads(json.dumps(capture_rng_state()))
    expected = (random.random(), float(np.random.rand()), torch.rand(3))
    restore_rng_state(state)
    again = (random.random(), float(np.random.rand()), torch.rand(3))
    assert expected[:2] == again[:2] and torch.equal(expected[2], again[2])
    before = torch.get_rng_state()
    with isolated_rng(7):
        x = torch.rand(2)
    with isolated_rng(7):
        assert torch.equal(torch.rand(2), x)
    assert torch.equal(torch.get_rng_state(), before)


# ---------------------------------------------------------------------------------------------------------
# checkpoints and resume
def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path: Path) -> None:
    cfg = toy_config(tmp_path / "straight", max_steps=12, log=LogConfig(tick_kimg=0.024, trackers=("jsonl",),
                                                                        progress_bar=False, image_every_steps=5))
    straight, phases_a, ema_a, G_a, D_a = run_toy(cfg)
    expected = modules_state(G_a, D_a, ema_a.module)
    assert straight.reason == "done"

    first, *_ = run_toy(cfg.replace(out_dir=str(tmp_path / "split"), max_steps=6))
    assert first.checkpoint == tmp_path / "split" / "checkpoints" / "step-00000006"
    meta = json.loads((first.checkpoint / "trainer_state.json").read_text())
    assert meta["state"] == {"step": 6, "cur_nimg": 48, "data_position": 48, "cur_tick": meta["state"]["cur_tick"],
                             "tick_start_nimg": meta["state"]["tick_start_nimg"]}
    rng = json.loads((first.checkpoint / "rng_state_0.json").read_text())
    assert set(rng) == {"python", "numpy", "torch", "cuda"}

    # new objects (fresh random init, other generator states): everything must come from the checkpoint
    torch.manual_seed(999)
    resumed, phases_b, ema_b, G_b, D_b = run_toy(cfg.replace(out_dir=str(tmp_path / "split"), resume="latest"))
    assert resumed.reason == "done" and resumed.state.step == 12
    assert_equal_states(modules_state(G_b, D_b, ema_b.module), expected)
    for pa, pb in zip(phases_a[::2], phases_b[::2], strict=True):  # Adam's moments and step counts too
        sa, sb = pa.optimizer.state_dict()["state"], pb.optimizer.state_dict()["state"]
        assert_equal_states([sa[i] for i in sorted(sa)], [sb[i] for i in sorted(sb)])
    saved = weights(resumed.checkpoint)
    assert_equal_states([saved["model"], saved["model_1"], saved["model_2"]], expected)
    for name in ("fakes-00000001.png", "fakes-00000005.png", "fakes-00000012.png", "grey-00000010.png"):
        assert (tmp_path / "straight" / "images" / name).is_file(), name

    again = run_toy(cfg.replace(out_dir=str(tmp_path / "split"), resume="latest"))[0]
    assert again.reason == "already done"


def test_checkpoints_are_atomic_pruned_and_follow_the_umask(tmp_path: Path) -> None:
    out = tmp_path / "run"
    stale = out / "checkpoints" / ".step-00000004.partial"
    stale.mkdir(parents=True)
    old_umask = os.umask(0o027)
    try:
        result, *_ = run_toy(toy_config(out, max_steps=7, checkpoint=CheckpointConfig(every_steps=2, keep_last=2)))
    finally:
        os.umask(old_umask)
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["step-00000006", "step-00000007"]  # every 2 steps + the end, the last 2 kept, no partials
    assert result.checkpoint == out / "checkpoints" / "step-00000007"
    assert (result.checkpoint.stat().st_mode & 0o777) == 0o750
    assert ((result.checkpoint / "model.safetensors").stat().st_mode & 0o777) == 0o640
    assert {"model.safetensors", "model_1.safetensors", "model_2.safetensors", "optimizer.bin", "optimizer_1.bin",
            "trainer_state.json", "rng_state_0.json"} <= {p.name for p in result.checkpoint.iterdir()}

    with pytest.raises(InputNotFoundError, match="not a checkpoint folder"):
        run_toy(toy_config(tmp_path / "other", resume=str(tmp_path / "nowhere")))
    fresh, *_ = run_toy(toy_config(tmp_path / "new", max_steps=1, resume="latest"))  # nothing yet: a new run
    assert fresh.state.step == 1
    from_dir, *_ = run_toy(toy_config(tmp_path / "new2", max_steps=8, resume=str(out)))  # a run's folder
    assert from_dir.state.step == 8


def test_start_kimg_and_kimg_stop(tmp_path: Path) -> None:
    result, *_ = run_toy(toy_config(tmp_path, max_steps=None, kimg=10.04, start_kimg=10.0))
    assert result.state.step == 5 and result.state.cur_nimg == 10_040
    with pytest.raises(ConfigError, match="kimg or max_steps"):
        run_toy(toy_config(tmp_path / "x", max_steps=None))


# ---------------------------------------------------------------------------------------------------------
# logging, exports, pushes
def test_logs_images_and_exports(tmp_path: Path) -> None:
    cfg = toy_config(tmp_path, max_steps=6, export=ExportConfig(every_steps=2, keep_last=2),
                     log=LogConfig(tick_kimg=0.016, trackers=("auto",), progress_bar=False, image_every_steps=4))
    result, *_ = run_toy(cfg)
    records = read_stats(tmp_path)
    assert [r["step"] for r in records] == [1, 3, 5, 6]  # the first step, then every 16 images (2 steps), the end
    last = records[-1]
    seen = set().union(*records)
    for key in ("Loss/Gmain", "Loss/Greg", "Loss/Dreg", "Loss/G/loss", "Loss/D/loss", "Loss/r1_penalty",
                "LR/G/base", "LR/G/head", "LR/D/base", "Timing/Gmain", "Timing/kimg_per_sec",
                "Resources/cpu_mem_gb", "Progress/kimg", "EMA/beta"):
        assert key in seen, key
    assert last["LR/G/head"] == pytest.approx(2.5 * last["LR/G/base"])
    assert last["LR/G/base"] == pytest.approx(1e-2 * 4 / 5)
    assert json.loads((tmp_path / "training_options.json").read_text())["max_steps"] == 6
    exports = sorted(p.name for p in (tmp_path / "export").iterdir())
    assert exports == ["step-00000004", "step-00000006"] and result.export == tmp_path / "export" / exports[-1]
    assert (result.export / "weights.pt").is_file()
    from PIL import Image

    assert Image.open(tmp_path / "images" / "fakes-00000004.png").size == (24, 16)  # 6 images: 3 per row, 8x8
    assert Image.open(tmp_path / "images" / "grey-00000006.png").size == (12, 8)


def test_a_failing_push_does_not_stop_training(tmp_path: Path) -> None:
    cfg = toy_config(tmp_path, max_steps=5, fail_push=True, export=ExportConfig(every_steps=2, keep_last=1))
    result, *_ = run_toy(cfg)
    assert result.reason == "done" and result.state.step == 5 and result.exit_code == 0
    assert len(result.push_failures) == 3 and "the Hub is unreachable" in result.push_failures[0]
    assert (tmp_path / "checkpoints" / "step-00000005").is_dir()
    assert [p.name for p in (tmp_path / "export").iterdir()] == ["step-00000005"]


def test_hub_push_offline_is_logged_not_fatal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = toy_config(tmp_path, max_steps=2)
    hooks = toy_hooks(cfg)
    hooks.push = hub_push("someone/toy-gan", token="not-a-token")
    result, *_ = run_toy(cfg, hooks)
    assert result.reason == "done" and len(result.push_failures) == 1
    assert "offline" in result.push_failures[0].lower()


def test_parse_config_flags_and_config_file(tmp_path: Path) -> None:
    cfg = parse_config(ToyConfig, ["--max-steps", "5", "--kimg", "1.5", "--checkpoint.every-steps", "2",
                                   "--ema.rampup", "none", "--log.trackers", "jsonl", "tensorboard", "--cpu",
                                   "--no-data.shuffle", "--mixed-precision", "bf16", "--dim", "3"])
    assert (cfg.max_steps, cfg.kimg, cfg.checkpoint.every_steps, cfg.ema.rampup, cfg.log.trackers, cfg.cpu,
            cfg.data.shuffle, cfg.mixed_precision, cfg.dim) == (5, 1.5, 2, None, ("jsonl", "tensorboard"), True,
                                                                  False, "bf16", 3)
    path = tmp_path / "options.json"
    path.write_text(cfg.to_json())
    again = parse_config(ToyConfig, ["--config", str(path), "--dim", "7"])
    assert again == cfg.replace(dim=7)
    with pytest.raises(SystemExit) as exc:
        parse_config(ToyConfig, ["--max-steps", "many"])
    assert exc.value.code == 1
    with pytest.raises(ConfigError, match="batch_size"):
        parse_config(ToyConfig, ["--batch-size", "0"])
    with pytest.raises(ConfigError, match="mixed_precision"):
        TrainConfig(mixed_precision="fp16")  # type: ignore[arg-type]
    help_text = _help(ToyConfig)
    assert "Save every this many steps" in help_text and "--checkpoint.every-steps" in help_text


def _help(cls: type) -> str:
    from train.core.cli import build_parser

    return build_parser(cls).format_help()


# ---------------------------------------------------------------------------------------------------------
# processes: signals, kill-and-resume, two processes
def _wait_for_stats(out: Path, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    path = out / "logs" / "train" / "stats.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file() and path.read_text().strip():
            return
        if proc.poll() is not None:
            raise AssertionError(f"the run ended early: {proc.communicate()}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("the run did not start in time")


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_a_new_process_resumes_bit_identically(tmp_path: Path) -> None:
    """SIGTERM to the whole process group (as schedulers do; loader workers included) mid-run: the step finishes,
    a checkpoint is written, exit 143; a new process resumes and ends bit-identical to an uninterrupted run."""
    total, workers = 60, ("--data.num-workers", "2")
    proc = subprocess.Popen([PYTHON, "-c", SCRIPT, *script_args(tmp_path / "killed", "--max-steps", str(total),
                                                                "--step-sleep", "0.03", *workers)],
                            cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    _wait_for_stats(tmp_path / "killed", proc)
    time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["reason"] == "SIGTERM" and 1 <= summary["step"] < total
    assert "SIGTERM received" in stderr and "stopped by SIGTERM" in stderr and "--resume latest" in stderr
    assert "Traceback" not in stderr
    checkpoint = Path(summary["checkpoint"])
    assert checkpoint.name == f"step-{summary['step']:08d}" and (checkpoint / "trainer_state.json").is_file()
    assert not list((tmp_path / "killed" / "checkpoints").glob(".*"))

    resumed = subprocess.run([PYTHON, "-c", SCRIPT, *script_args(tmp_path / "killed", "--max-steps", str(total),
                                                                 "--resume", "latest", *workers)],
                             cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    straight = subprocess.run([PYTHON, "-c", SCRIPT, *script_args(tmp_path / "straight", "--max-steps", str(total),
                                                                  *workers)],
                              cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert straight.returncode == 0, straight.stderr
    a = weights(tmp_path / "killed" / "checkpoints" / f"step-{total:08d}")
    b = weights(tmp_path / "straight" / "checkpoints" / f"step-{total:08d}")
    assert_equal_states(list(a.values()), list(b.values()))


@pytest.mark.slow
@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside this Python")
def test_two_processes_match_one_process(tmp_path: Path) -> None:
    args = ["--max-steps", "10", "--no-noise", "--seed", "0"]
    one = subprocess.run([PYTHON, "-c", SCRIPT, *script_args(tmp_path / "one", *args)], cwd=ROOT, env=_env(),
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    script = tmp_path / "toy_script.py"
    script.write_text(SCRIPT.replace("; ", "\n"))
    two = subprocess.run([str(TORCHRUN), "--nproc_per_node", "2", "--master_port", str(_free_port()), str(script),
                          *script_args(tmp_path / "two", *args)], cwd=ROOT, env=_env(), capture_output=True,
                         text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    a = weights(tmp_path / "one" / "checkpoints" / "step-00000010")
    b = weights(tmp_path / "two" / "checkpoints" / "step-00000010")
    worst = 0.0
    for name in a:
        for key in a[name]:
            worst = max(worst, (a[name][key] - b[name][key]).abs().max().item())
            assert torch.allclose(a[name][key], b[name][key], rtol=0, atol=1e-6), (name, key)
    print(f"two processes vs one: max abs difference {worst:.3g}")
    state = json.loads((tmp_path / "two" / "checkpoints" / "step-00000010" / "trainer_state.json").read_text())
    assert state["num_processes"] == 2 and state["state"]["data_position"] == 80
    assert {"rng_state_0.json", "rng_state_1.json"} <= {p.name for p in (tmp_path / "two" / "checkpoints" /
                                                                         "step-00000010").iterdir()}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_image_grid_layout() -> None:
    from train.core import image_grid

    images = torch.stack([torch.full((3, 2, 2), v) for v in (-1.0, 0.0, 1.0)])
    grid = image_grid(images, nrow=2)
    assert grid.shape == (4, 4, 3) and grid.dtype == np.uint8
    assert grid[0, 0, 0] == 0 and grid[0, 2, 0] == 128 and grid[2, 0, 0] == 255 and grid[2, 2, 0] == 0
    assert math.isclose(float(grid.mean()), (0 + 128 + 255) * 4 * 3 / 48)

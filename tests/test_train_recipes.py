"""The Portrait4D recipes reproduce the official values (design note portrait4d-training.md sections 0-1)."""

from __future__ import annotations

import pytest

from avatar.errors import UnknownOptionValueError
from train.recipes.portrait4d import RECIPES, recipe


def test_effective_adam_settings_equal_the_official_table() -> None:
    v1, v2 = RECIPES["v1"], RECIPES["v2"]
    lr, betas = v1.adam("G")
    assert lr == pytest.approx(9.412e-5, rel=1e-4) and betas == pytest.approx((0.90560, 0.99906), abs=1e-5)
    lr, betas = v2.adam("G")
    assert lr == pytest.approx(8.0e-5) and betas == pytest.approx((0.91917, 0.99920), abs=1e-5)
    assert v2.adam("G")[0] * v2.cross_lr_scale == pytest.approx(2.0e-4)
    assert v2.adam("D") == v1.adam("D")


def test_schedules_and_ema() -> None:
    v1, v2 = RECIPES["v1"], RECIPES["v2"]
    assert [v1.neural_rendering_resolution(k * 1e3) for k in (0, 1000, 1500, 2000, 5000)] == [64, 64, 96, 128, 128]
    assert v2.neural_rendering_resolution(0) == 128
    assert v1.ema_beta(1e9) == pytest.approx(0.99778, abs=1e-5)  # batch 32, 10 kimg
    assert v1.ema_beta(32 * 100) == pytest.approx(0.5 ** (32 / (3200 * 0.05)))  # the ramp-up
    assert v1.with_batch(2).ema_kimg == 0.625  # the official toy config
    assert RECIPES["static"].static and not v1.static and v2.reg_type == "G_fix_img"
    assert v2.losses.density_reg == 1.0 and v1.losses.density_reg == 0.25 and v1.losses.adversarial == 0.01


def test_overrides_are_checked() -> None:
    assert recipe("v2", batch=8).batch == 8
    with pytest.raises(UnknownOptionValueError, match="unknown recipe 'v3'"):
        recipe("v3")
    with pytest.raises(UnknownOptionValueError, match="bogus"):
        recipe("v1", bogus=1)

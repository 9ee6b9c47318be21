import math

import pytest

from snowtrain.config import ScheduleConfig
from snowtrain.optim.schedules import lr_at


def test_recipe_phase1_cosine():
    s = ScheduleConfig(kind="cosine", warmup_steps=600, peak_lr=5.3e-4, min_lr=5.3e-5)
    total = 119_210
    assert lr_at(0, s, total, 1.0) == pytest.approx(5.3e-4 / 600)
    assert lr_at(599, s, total, 1.0) == pytest.approx(5.3e-4)
    assert lr_at(total - 1, s, total, 1.0) == pytest.approx(5.3e-5)
    mid = 600 + (total - 600) // 2 - 1
    assert lr_at(mid, s, total, 1.0) == pytest.approx((5.3e-4 + 5.3e-5) / 2, rel=1e-3)
    lrs = [lr_at(i, s, total, 1.0) for i in range(600, total, 997)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_recipe_phase2_rewarm_then_linear_to_zero():
    s = ScheduleConfig(kind="linear", warmup_steps=1000, peak_lr=5.3e-4, start_lr=0.0, min_lr=0.0)
    total = 11_921
    assert lr_at(999, s, total, 1.0) == pytest.approx(5.3e-4)
    assert lr_at(total - 1, s, total, 1.0) == 0.0
    half = 1000 + (total - 1000) // 2
    assert lr_at(half, s, total, 1.0) == pytest.approx(5.3e-4 / 2, rel=1e-3)


def test_constant_and_wsd_and_default_peak():
    c = ScheduleConfig(kind="constant", warmup_steps=2)
    assert [lr_at(i, c, 10, 0.1) for i in range(4)] == [0.05, 0.1, 0.1, 0.1]
    w = ScheduleConfig(kind="wsd", warmup_steps=0, min_lr=0.0, decay_fraction=0.5)
    lrs = [lr_at(i, w, 10, 1.0) for i in range(10)]
    assert lrs[:5] == [1.0] * 5 and lrs[-1] == 0.0 and lrs[5] == pytest.approx(0.8)
    assert math.isclose(lr_at(3, ScheduleConfig(kind="cosine", decay_steps=4), 100, 2.0), 0.0, abs_tol=1e-12)

import math

import pytest

from scal_sdt.training.lr import PiecewiseLR, lr_at


def test_piecewise_follows_webui_syntax():
    s = PiecewiseLR.parse("0.005:100, 1e-3:1000, 1e-5")
    assert s(0) == 0.005 and s(99) == 0.005
    assert s(100) == 1e-3 and s(999) == 1e-3
    assert s(1000) == 1e-5 and s(10**6) == 1e-5


def test_piecewise_last_piece_with_step_holds():
    s = PiecewiseLR.parse("0.01:10")
    assert s(5) == 0.01 and s(50) == 0.01


@pytest.mark.parametrize("bad", ["", "abc", "0.1:x", "0.1, 0.2:5", "0.1:10, 0.2:5", "-1"])
def test_bad_schedules_are_refused_with_the_text(bad):
    with pytest.raises(ValueError):
        PiecewiseLR.parse(bad)


def test_cosine_with_warmup_matches_hand_computed_values():
    assert lr_at(0, "cosine", "0.1", 110, warmup_steps=10) == pytest.approx(0.1 * 1 / 10)
    assert lr_at(9, "cosine", "0.1", 110, warmup_steps=10) == pytest.approx(0.1)
    assert lr_at(10, "cosine", "0.1", 110, warmup_steps=10) == pytest.approx(0.1)
    assert lr_at(60, "cosine", "0.1", 110, warmup_steps=10) == pytest.approx(0.05)
    assert lr_at(110, "cosine", "0.1", 110, warmup_steps=10) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(35, "cosine", "0.1", 110, 10) == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 0.25)))


def test_cosine_restarts_and_exponential():
    from scal_sdt.training.lr import lr_at

    restarts = [lr_at(s, "cosine_restarts", "1.0", 90, cycles=3) for s in range(90)]
    assert restarts[0] == restarts[30] == restarts[60] == 1.0  # each cycle starts at the first rate
    assert restarts[15] == pytest.approx(0.5) and restarts[29] < 0.01
    assert lr_at(50, "exponential", "1.0", 100) == pytest.approx(0.1)
    assert lr_at(100, "exponential", "1.0", 100) == pytest.approx(0.01)
    assert lr_at(0, "exponential", "2e-3", 100, warmup_steps=10) == pytest.approx(2e-4)

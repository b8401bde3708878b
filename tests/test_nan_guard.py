"""The NaN guard on its own: a rejected step puts weights and optimizer state back as they were after the last good
one and halves the rate; it gives up after max_bad_steps in a row; a good step resets the count."""
import pytest
import torch

from scal_sdt.training import nan_guard
from scal_sdt.training.nan_guard import NanGuard, finite_gradients


def stepped(w, opt, value):
    w.grad = torch.full_like(w, value)
    opt.step()


def test_a_rejected_step_is_rolled_back_with_its_optimizer_state():
    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.AdamW([w], lr=0.1)
    guard = NanGuard([w], opt, max_bad_steps=2)
    stepped(w, opt, 1.0)
    guard.accept()
    good_w, good_m = w.detach().clone(), opt.state[w]["exp_avg"].clone()
    stepped(w, opt, float("nan"))
    assert not guard.weights_finite()
    message = guard.reject(step=2)
    assert torch.equal(w.detach(), good_w) and torch.equal(opt.state[w]["exp_avg"], good_m)
    assert guard.lr_scale == 0.5 and not guard.gave_up
    assert message == "step 2: loss or gradients not finite; rolled back to the last good state and halved the " \
                      "learning rate (x0.5) [1/2]"
    guard.reject(step=2)
    assert guard.gave_up and guard.lr_scale == 0.25 and guard.bad_total == 2
    guard.accept()
    assert guard.bad_in_row == 0 and not guard.gave_up and guard.bad_total == 2


def test_above_the_snapshot_limit_no_copy_is_kept(monkeypatch):
    monkeypatch.setattr(nan_guard, "SNAPSHOT_LIMIT", 2)
    w = torch.nn.Parameter(torch.ones(3))
    guard = NanGuard([w], torch.optim.SGD([w], lr=1.0), max_bad_steps=5, lr_scale=0.5)
    assert guard.good is None and guard.weights_finite()  # nothing to check against: the next loss shows it
    assert "skipped it" in guard.reject(step=1) and guard.lr_scale == 0.25


def test_finite_gradients_sees_one_bad_element():
    a, b = torch.zeros(2, requires_grad=True), torch.zeros(3, requires_grad=True)
    a.grad, b.grad = torch.ones(2), torch.ones(3)
    assert finite_gradients([a, b])
    b.grad[1] = float("inf")
    assert not finite_gradients([a, b])
    assert finite_gradients([torch.zeros(1, requires_grad=True)])  # no gradient at all


@pytest.mark.parametrize("field", ["fused_backward", "ema_decay", "ema_on_cpu", "max_bad_steps"])
def test_the_loops_options_are_fields_of_every_trainers_options(field):
    from scal_sdt.dreambooth.config import DreamBoothConfig
    from scal_sdt.hypernetwork.config import HypernetworkConfig
    from scal_sdt.textual_inversion.config import EmbeddingConfig
    from scal_sdt.training.options import TrainingOptions

    import dataclasses

    for kind in (TrainingOptions, EmbeddingConfig, HypernetworkConfig, DreamBoothConfig):
        assert field in {f.name for f in dataclasses.fields(kind)}, kind.__name__

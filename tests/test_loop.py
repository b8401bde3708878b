"""The one loop on a small regression job: exact resume, NaN rollback, interrupt, accumulation."""
from pathlib import Path

import pytest
import torch

from scal_sdt.training.loop import TrainingDiverged, run_loop
from scal_sdt.training.options import TrainingOptions
from recording import latest_state
from recording import RecordingReporter as Quiet


class RegressionJob:
    """Fit w to y = x·w_true from a seeded stream; optionally poison chosen micro-batches with NaN."""

    name = "regression"

    def __init__(self, poison=()):
        self.w = torch.nn.Parameter(torch.zeros(4))
        self.gen = torch.Generator().manual_seed(0)
        self.true = torch.tensor([1.0, -2.0, 0.5, 3.0])
        self.calls = 0
        self.poison = set(poison)
        self.saved = []

    def param_groups(self):
        return [{"params": [self.w]}]

    def loss(self):
        self.calls += 1
        x = torch.randn(8, 4, generator=self.gen)
        loss = ((x @ self.w - x @ self.true) ** 2).mean()
        if self.calls in self.poison:
            loss = loss * float("nan")
        return loss

    def save(self, step, final):
        self.saved.append((step, final, self.w.detach().clone()))
        return Path(f"w-{step}")

    def preview(self, step):
        return [], []

    def state_dict(self):
        return {"gen": self.gen.get_state(), "calls": self.calls}

    def load_state_dict(self, state):
        self.gen.set_state(state["gen"])
        self.calls = state["calls"]


def opts(tmp, **kw):
    base = dict(steps=20, lr="0.05", save_every=5, preview_every=0, log_dir=str(tmp))
    base.update(kw)
    return TrainingOptions(**{k: v for k, v in base.items() if k != "log_dir"})


def test_loss_falls_and_files_are_written(tmp_path):
    job = RegressionJob()
    res = run_loop(opts(tmp_path, steps=60), job, tmp_path, Quiet(), torch.device("cpu"))
    assert res.step == 60 and not res.interrupted
    assert res.losses[-1] < 0.05 * res.losses[0]
    assert (tmp_path / "loss.csv").read_text().count("\n") == 61
    assert (tmp_path / "loss.png").stat().st_size > 1000
    assert latest_state(tmp_path)["step"] == 60
    assert [s for s, final, _ in job.saved if not final] == [5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 55]


def test_resume_gives_the_same_curve_as_an_uninterrupted_run(tmp_path):
    full = run_loop(opts(tmp_path / "a", steps=20), RegressionJob(), tmp_path / "a", Quiet(), torch.device("cpu"))
    first = run_loop(opts(tmp_path / "b", steps=20), RegressionJob(), tmp_path / "b", Quiet(stop_at=8),
                     torch.device("cpu"))
    assert first.interrupted and first.step == 8
    job = RegressionJob()
    second = run_loop(opts(tmp_path / "b", steps=20, resume=True), job, tmp_path / "b", Quiet(), torch.device("cpu"))
    assert second.step == 20
    assert first.losses + second.losses == pytest.approx(full.losses, rel=1e-6, abs=1e-9)
    state = latest_state(tmp_path / "b")
    assert state["step"] == 20 and state["optimizer"]["state"][0]["step"] == 20
    rows = (tmp_path / "b" / "loss.csv").read_text().strip().splitlines()
    assert len(rows) == 21  # header + one row per step, no duplicates after resume


def test_nan_at_step_k_is_rolled_back_and_halves_the_lr(tmp_path):
    clean = RegressionJob()
    run_loop(opts(tmp_path / "c", steps=6, save_every=0), clean, tmp_path / "c", Quiet(), torch.device("cpu"))
    job = RegressionJob(poison={4})
    rep = Quiet()
    res = run_loop(opts(tmp_path / "p", steps=6, save_every=0), job, tmp_path / "p", rep, torch.device("cpu"))
    assert res.step == 6 and res.bad_steps == 1
    assert any("not finite" in m and "halved" in m for m in rep.messages)
    assert torch.isfinite(job.w).all()
    assert len(res.losses) == 6 and job.calls == 7  # the poisoned batch was skipped, training went on


def test_a_large_model_skips_a_bad_step_without_a_rollback_copy(tmp_path, monkeypatch):
    """Above SNAPSHOT_LIMIT weights no copy of weights and optimizer state is kept (it would double a full
    fine-tune's memory): a non-finite loss is caught before the step is applied, so skipping it loses nothing."""
    import scal_sdt.training.nan_guard as nan_guard

    monkeypatch.setattr(nan_guard, "SNAPSHOT_LIMIT", 0)
    monkeypatch.setattr(nan_guard, "snapshot", lambda *a: pytest.fail("no snapshot for a large model"))
    job = RegressionJob(poison={4})
    rep = Quiet()
    res = run_loop(opts(tmp_path, steps=6, save_every=0), job, tmp_path, rep, torch.device("cpu"))
    assert res.step == 6 and res.bad_steps == 1 and torch.isfinite(job.w).all()
    assert any("skipped it and halved" in m for m in rep.messages)


def test_repeated_nan_stops_with_a_clear_message_and_keeps_the_last_good_state(tmp_path):
    job = RegressionJob(poison=set(range(3, 100)))
    with pytest.raises(TrainingDiverged, match="diverged"):
        run_loop(opts(tmp_path, steps=10, save_every=0, max_bad_steps=3), job, tmp_path, Quiet(), torch.device("cpu"))
    state = latest_state(tmp_path)
    assert state["step"] == 2 and torch.isfinite(state["params"][0]).all()


def test_interrupt_saves_the_last_state(tmp_path):
    job = RegressionJob()
    res = run_loop(opts(tmp_path, steps=50, save_every=0), job, tmp_path, Quiet(stop_at=7), torch.device("cpu"))
    assert res.interrupted and res.step == 7
    assert job.saved[-1][0] == 7 and job.saved[-1][1] is True
    assert latest_state(tmp_path)["step"] == 7


def test_gradient_accumulation_averages_micro_batches(tmp_path):
    job = RegressionJob()
    res = run_loop(opts(tmp_path, steps=3, grad_accum=4, save_every=0), job, tmp_path, Quiet(), torch.device("cpu"))
    assert job.calls == 12 and res.step == 3


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_paths_train(tmp_path, precision):
    job = RegressionJob()
    res = run_loop(opts(tmp_path, steps=60, precision=precision, save_every=0), job, tmp_path, Quiet(),
                   torch.device("cpu"))
    ref = run_loop(opts(tmp_path / "fp32", steps=60, save_every=0), RegressionJob(), tmp_path / "fp32", Quiet(),
                   torch.device("cpu"))
    assert sum(res.losses[-10:]) < 0.3 * sum(res.losses[:10])
    assert sum(res.losses[-10:]) == pytest.approx(sum(ref.losses[-10:]), rel=0.3)


def test_ctrl_c_stops_cleanly_and_saves(tmp_path):
    class Interrupted(RegressionJob):
        def loss(self):
            if self.calls == 4:
                raise KeyboardInterrupt
            return super().loss()

    job = Interrupted()
    rep = Quiet()
    res = run_loop(opts(tmp_path, steps=50, save_every=0), job, tmp_path, rep, torch.device("cpu"))
    assert res.interrupted and res.step == 4
    assert job.saved[-1][:2] == (4, True)
    assert latest_state(tmp_path)["step"] == 4
    assert any("interrupted" in m for m in rep.messages)

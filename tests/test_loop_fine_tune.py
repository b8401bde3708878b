"""What the loop offers full fine-tunes: the optimizer step fused into the backward pass steps
like the plain optimizer and leaves no hooks behind; the EMA is what is saved and resumes exactly; several processes
(torchrun on the CPU, gloo) average their gradients so every process holds the same weights, equal to one process
that sees both processes' batches."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from recording import RecordingReporter as Quiet
from recording import latest_state
from scal_sdt.training.fused import FusedBackward
from scal_sdt.training.loop import run_loop
from scal_sdt.training.options import TrainingOptions

HERE = Path(__file__).resolve().parent


class TwoLayerJob:
    """y = relu(x W1) · w2 on a seeded stream: two parameters, so the hooks fire in backward order; ``seeds``
    averages the losses of several streams (what several processes with those seeds compute together)."""

    name = "two-layer"

    def __init__(self, seeds=(0,), fail_at=None):
        start = torch.Generator().manual_seed(123)
        self.w1 = torch.nn.Parameter(torch.randn(4, 8, generator=start) * 0.5)
        self.w2 = torch.nn.Parameter(torch.randn(8, generator=start) * 0.5)
        self.gens = [torch.Generator().manual_seed(s) for s in seeds]
        self.true = torch.randn(4, generator=start)
        self.calls = 0
        self.fail_at = fail_at
        self.saved = []
        self.after = []

    def param_groups(self):
        return [{"params": [self.w1]}, {"params": [self.w2], "lr_scale": 0.5}]

    def loss(self):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("boom")
        losses = []
        for gen in self.gens:
            x = torch.randn(16, 4, generator=gen)
            losses.append(((torch.relu(x @ self.w1) @ self.w2 - (x @ self.true).tanh()) ** 2).mean())
        return torch.stack(losses).mean()

    def after_step(self, step):
        self.after.append([p.detach().clone() for p in (self.w1, self.w2)])

    def save(self, step, final):
        self.saved.append((step, final, [p.detach().clone() for p in (self.w1, self.w2)]))
        return Path(f"w-{step}")

    def preview(self, step):
        return [], []

    def state_dict(self):
        return {"gens": [g.get_state() for g in self.gens], "calls": self.calls}

    def load_state_dict(self, state):
        for g, s in zip(self.gens, state["gens"]):
            g.set_state(s)
        self.calls = state["calls"]


def options(**kw):
    base = dict(steps=12, lr="0.02", save_every=0, preview_every=0)
    base.update(kw)
    return TrainingOptions(**base)


def run(tmp, job, **kw):
    return run_loop(options(**kw), job, tmp, Quiet(), torch.device("cpu"))


@pytest.mark.parametrize("settings", [dict(), dict(optimizer="adafactor"), dict(grad_accum=3),
                                      dict(clip_grad="value", clip_value=0.05), dict(precision="bf16")])
def test_fused_backward_steps_like_the_plain_optimizer(tmp_path, settings):
    plain, fused = TwoLayerJob(), TwoLayerJob()
    a = run(tmp_path / "plain", plain, **settings)
    b = run(tmp_path / "fused", fused, fused_backward=True, **settings)
    assert b.losses == pytest.approx(a.losses, rel=1e-5, abs=1e-7)
    for p, q in zip(plain.saved[-1][2], fused.saved[-1][2]):
        assert torch.allclose(p, q, rtol=1e-5, atol=1e-7)
    assert a.losses[-1] < a.losses[0]
    for p in (fused.w1, fused.w2):  # the hooks are gone: a later backward leaves its gradient where it is
        assert not getattr(p, "_post_accumulate_grad_hooks", None)


def test_fused_backward_leaves_no_hooks_when_the_run_fails(tmp_path):
    job = TwoLayerJob(fail_at=3)
    with pytest.raises(RuntimeError, match="boom"):
        run(tmp_path, job, fused_backward=True)
    (job.w1.sum() + job.w2.sum()).backward()
    assert job.w1.grad is not None and job.w2.grad is not None


def test_fused_backward_resumes_exactly(tmp_path):
    full = run(tmp_path / "a", TwoLayerJob(), fused_backward=True)
    first = run_loop(options(fused_backward=True), TwoLayerJob(), tmp_path / "b", Quiet(stop_at=5),
                     torch.device("cpu"))
    second = run(tmp_path / "b", TwoLayerJob(), fused_backward=True, resume=True)
    assert first.step == 5 and second.step == 12
    assert first.losses + second.losses == pytest.approx(full.losses, rel=1e-6)
    assert latest_state(tmp_path / "b")["optimizer"]["state"][0]["step"] == 12


def test_fused_fp16_scale_halves_on_overflow_and_the_bad_gradient_never_lands():
    w = torch.nn.Parameter(torch.ones(3))
    fused = FusedBackward(lambda g: torch.optim.SGD(g, lr=0.0), [{"params": [w]}], loss_scale=4096.0)
    try:
        fused.param_groups[0]["lr"] = 0.1
        (w.sum() * 1e36 * fused.loss_scale).backward()  # 4e39 overflows fp32: every gradient element is inf
        assert fused.finish_step() is False and fused.loss_scale == 2048.0
        assert torch.equal(w.detach(), torch.ones(3)) and w.grad is None  # zeroed, then freed
        (w.sum() * fused.loss_scale).backward()
        assert fused.finish_step() is True
        assert torch.allclose(w.detach(), torch.full((3,), 0.9))  # unscaled: a gradient of 1, lr 0.1
    finally:
        fused.close()


def test_the_loop_counts_an_overflowing_fused_step_as_bad_and_rolls_it_back(tmp_path):
    class Overflow(TwoLayerJob):
        def loss(self):
            loss = super().loss()
            return loss + self.w2.sum() * 1e36 if self.calls == 4 else loss  # finite loss, inf scaled gradient

    job, rep = Overflow(), Quiet()
    res = run_loop(options(fused_backward=True, precision="fp16"), job, tmp_path, rep, torch.device("cpu"))
    assert res.step == 12 and res.bad_steps == 1
    assert any("not finite" in m and "rolled back" in m for m in rep.messages)
    assert torch.isfinite(job.w1).all() and torch.isfinite(job.w2).all()


def test_the_ema_is_what_is_saved_and_it_resumes_exactly(tmp_path):
    job = TwoLayerJob()
    run(tmp_path / "a", job, ema_decay=0.8)
    fresh = TwoLayerJob()
    shadow = [fresh.w1.detach().clone(), fresh.w2.detach().clone()]
    for n, weights in enumerate(job.after, start=1):
        rate = min(0.8, (1 + n) / (10 + n))
        shadow = [s * rate + w * (1 - rate) for s, w in zip(shadow, weights)]
    step, final, saved = job.saved[-1]
    assert final and step == 12
    for s, v in zip(shadow, saved):
        assert torch.allclose(s, v, atol=1e-6)
    assert torch.equal(job.w2.detach(), job.after[-1][1])  # the live weights are the last step's, not the average
    assert not torch.allclose(saved[1], job.after[-1][1])

    first = run_loop(options(ema_decay=0.8), TwoLayerJob(), tmp_path / "b", Quiet(stop_at=5), torch.device("cpu"))
    assert first.step == 5
    resumed = TwoLayerJob()
    run(tmp_path / "b", resumed, ema_decay=0.8, resume=True)
    for a, b in zip(saved, resumed.saved[-1][2]):
        assert torch.allclose(a, b, atol=1e-6)


def test_preflight_counts_fused_backward_and_the_ema():
    from scal_sdt.dreambooth.config import DreamBoothConfig
    from scal_sdt.dreambooth.preflight import ModelSize, advise, estimate

    sd1 = ModelSize(unet=859_520_964, text=123_060_480, vae=83_653_863, family="sd1")
    cfg = DreamBoothConfig(name="x", instance_data="d", gradient_checkpointing=True, optimizer="adafactor",
                           master_weights="bf16", precision="bf16")
    base = estimate(cfg, sd1, 512).peak_mib
    fused = estimate(DreamBoothConfig(**{**vars(cfg), "fused_backward": True}), sd1, 512).peak_mib
    assert base - fused > 0.9 * 859_520_964 * 2 / 2 ** 20  # the gradients (bf16) are never held together
    ema = estimate(DreamBoothConfig(**{**vars(cfg), "ema_decay": 0.999}), sd1, 512).peak_mib
    assert ema - base == pytest.approx(859_520_964 * 4 / 2 ** 20)
    sdxl = ModelSize(unet=2_567_463_684, text=817_844_480, vae=83_653_863, family="sdxl")
    first = DreamBoothConfig(name="x", instance_data="d", gradient_checkpointing=True)
    _, advice = advise(first, sdxl, 1024, 10.0)
    from scal_sdt.config import speak

    assert any(speak(a, "cli").startswith("--fused-backward") for a in advice)  # the advice in the CLI's words
    least = DreamBoothConfig(**{**vars(first), "optimizer": "adafactor", "fused_backward": True,
                                "master_weights": "bf16", "precision": "bf16"})
    assert estimate(least, sdxl, 1024).peak_mib < 10 * 1024
    with pytest.raises(ValueError, match="clip by norm"):
        DreamBoothConfig(name="x", instance_data="d", fused_backward=True, clip_grad="norm")


def torchrun(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parent / "extensions_builtin"),
                                                        os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           *args], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("fused", [False, True])
def test_two_processes_average_gradients_like_one_seeing_both_batches(tmp_path, fused):
    """Two processes with seeds 0 and 1 each draw their own batch; after every step both hold the weights one
    process gets from the mean of the two batches' losses (seeds 0 and 1 in one job)."""
    out = tmp_path / "ranks"
    done = torchrun(str(HERE / "distributed_probe.py"), str(out), str(tmp_path / "run"), str(int(fused)))
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for a, b in zip(ranks[0]["weights"], ranks[1]["weights"]):
        assert torch.equal(a, b)
    assert ranks[0]["saved"] and not ranks[1]["saved"]  # the first process alone writes results
    together = TwoLayerJob(seeds=(0, 1))
    run(tmp_path / "one", together, fused_backward=fused, steps=6)
    for a, b in zip(ranks[0]["weights"], together.saved[-1][2]):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    state = latest_state(tmp_path / "run")
    assert len(state["ranks"]) == 2 and state["ranks"][1]["job"]["calls"] == 6

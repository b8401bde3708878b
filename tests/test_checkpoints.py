"""Crash-proof checkpoints and steering a run while it trains."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from recording import RecordingReporter, latest_state
from scal_sdt.training import checkpoints as ckpts
from scal_sdt.training.checkpoints import CheckpointError, CheckpointStore
from scal_sdt.training.control import request, write_request
from scal_sdt.training.loop import run_loop
from scal_sdt.training.options import TrainingOptions
from test_loop import RegressionJob

TESTS = Path(__file__).parent


def opts(**kw):
    base = dict(steps=10, lr="0.05", save_every=0, preview_every=0)
    base.update(kw)
    return TrainingOptions(**base)


def test_kill_9_in_the_middle_of_a_save_then_resume(tmp_path):
    """A child trains with a checkpoint every step and is killed with SIGKILL while it writes one; the resumed run
    loads no half-written state and continues at the right step."""
    child = textwrap.dedent(f"""
        import os, sys, time, torch
        sys.path.insert(0, {str(TESTS)!r})
        from pathlib import Path
        from scal_sdt.training import checkpoints
        from scal_sdt.training.loop import run_loop
        from scal_sdt.training.options import TrainingOptions
        from test_loop import RegressionJob
        from recording import RecordingReporter
        real_fsync = os.fsync
        def slow_fsync(fd):
            real_fsync(fd)
            name = os.readlink(f"/proc/self/fd/{{fd}}")
            if os.path.exists({str(tmp_path / 'go')!r}) and ".tmp-" in name and name.endswith("state.pt"):
                Path({str(tmp_path / 'saving')!r}).touch()
                time.sleep(60)  # killed in here, between writing the state and marking it complete
        os.fsync = slow_fsync
        run_loop(TrainingOptions(steps=50, lr="0.05", save_every=1, preview_every=0), RegressionJob(),
                 Path({str(tmp_path / 'run')!r}), RecordingReporter(), torch.device("cpu"))
    """)
    proc = subprocess.Popen([sys.executable, "-c", child])
    try:
        deadline = time.time() + 120
        while not list((tmp_path / "run" / "checkpoints").glob("step-000000[3-9]")) and time.time() < deadline:
            time.sleep(0.05)
        (tmp_path / "go").touch()
        while not (tmp_path / "saving").exists() and time.time() < deadline:
            time.sleep(0.01)
        assert (tmp_path / "saving").exists(), "the child never reached a save"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    store = CheckpointStore(tmp_path / "run")
    complete = [c.step for c in store.complete()]
    assert complete and list((tmp_path / "run" / "checkpoints").glob(".step-*.tmp-*"))  # a save was cut short
    rep = RecordingReporter()
    job = RegressionJob()
    res = run_loop(opts(steps=complete[-1] + 3, resume=True), job, tmp_path / "run", rep, torch.device("cpu"))
    assert any(f"resumed regression at step {complete[-1]}" in m for m in rep.messages)
    assert any("unfinished checkpoint save" in m for m in rep.messages)
    assert res.step == complete[-1] + 3 and len(res.losses) == 3


def test_a_damaged_checkpoint_is_skipped_with_a_message(tmp_path):
    run_loop(opts(steps=6, save_every=2), RegressionJob(), tmp_path, RecordingReporter(), torch.device("cpu"))
    newest = CheckpointStore(tmp_path).complete()[-1]
    data = bytearray((newest.path / "state.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different content
    (newest.path / "state.pt").write_bytes(bytes(data))
    messages = []
    ckpt, state = CheckpointStore(tmp_path, report=messages.append).load_latest()
    assert ckpt.step == 4 and state["step"] == 4
    assert any("damaged" in m and newest.path.name in m for m in messages)
    (ckpt.path / ckpts.MARKER).unlink()
    ckpt, _ = CheckpointStore(tmp_path, report=messages.append).load_latest()
    assert ckpt.step == 2 and any("no valid completion marker" in m for m in messages)


def test_rolling_checkpoints_keep_the_last_k_and_backups(tmp_path):
    class BackupAt5(RegressionJob):
        def loss(self):
            if self.calls + 1 == 5:  # during step 5
                request(tmp_path, "backup")
            return super().loss()

    run_loop(opts(steps=12, save_every=1, keep_checkpoints=2), BackupAt5(), tmp_path, RecordingReporter(),
             torch.device("cpu"))
    steps = [c.step for c in CheckpointStore(tmp_path).complete()]
    assert steps == [5, 11, 12]  # the backup of step 5 stays; rolling: the last two


def test_a_full_disk_stops_the_save_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    run_loop(opts(steps=4, save_every=2), RegressionJob(), tmp_path, RecordingReporter(), torch.device("cpu"))
    before = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    real = ckpts.shutil.disk_usage
    monkeypatch.setattr(ckpts.shutil, "disk_usage", lambda p: real(p)._replace(free=1000))
    rep = RecordingReporter()
    with pytest.raises(CheckpointError, match=r"not enough free disk.*needs [\d.]+ MB.*previous checkpoint is kept"):
        run_loop(opts(steps=8, save_every=2, resume=True), RegressionJob(), tmp_path, rep, torch.device("cpu"))
    assert any("not enough free disk" in m for m in rep.messages)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == before
    monkeypatch.setattr(ckpts.shutil, "disk_usage", real)

    def no_space(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpts.os, "fsync", no_space)
    with pytest.raises(CheckpointError, match="No space left"):
        CheckpointStore(tmp_path).save(99, {"step": 99})
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == before  # no temp folder left behind
    assert latest_state(tmp_path)["step"] == 4


def test_a_checkpoint_is_written_straight_to_its_file_not_held_in_memory_first(tmp_path):
    """A full fine-tune's state (weights and optimizer state: 5 GB for SD1) is serialized into the file as it goes,
    so it is never held a second time in memory; the marker's size and hash are the file's, and it loads back."""
    import hashlib
    import tracemalloc

    state = {"step": 3, "params": [torch.full((1 << 20,), float(i)) for i in range(8)],  # 32 MiB of tensors
             "optimizer": {"state": {0: {"exp_avg_sq_row": torch.ones(1 << 18)}}}}
    assert ckpts.state_bytes(state) == 8 * 4 * (1 << 20) + 4 * (1 << 18)
    tracemalloc.start()
    try:
        folder = CheckpointStore(tmp_path).save(3, state)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * (1 << 20), peak  # an in-memory buffer would have taken all 33 MiB
    data = (folder / ckpts.STATE).read_bytes()
    marker = json.loads((folder / ckpts.MARKER).read_text())["files"][ckpts.STATE]
    assert marker == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    loaded = CheckpointStore(tmp_path).load_latest()[1]
    assert all(torch.equal(a, b) for a, b in zip(loaded["params"], state["params"]))


@pytest.mark.parametrize("how", ["file", "in-process"])
def test_each_control_request_is_honoured_within_one_step(tmp_path, how):
    class Steered(RegressionJob):
        previews = []

        def preview(self, step):
            self.previews.append(step)
            return [], []

        def loss(self):
            asks = {3: "sample", 5: "save", 7: "backup", 9: "stop"}  # asked during these steps
            if self.calls + 1 in asks:
                (write_request if how == "file" else request)(tmp_path, asks[self.calls + 1])
            return super().loss()

    job = Steered()
    rep = RecordingReporter()
    res = run_loop(opts(steps=100), job, tmp_path, rep, torch.device("cpu"))
    assert job.previews == [3]
    assert [s for s, final, _ in job.saved if not final] == [5]
    kept = json.loads((tmp_path / "checkpoints" / "step-0000007" / ckpts.MARKER).read_text())
    assert kept["keep"] is True
    assert res.interrupted and res.step == 9 and any("stopping after step 9" in m for m in rep.messages)


def test_validation_loss_is_logged_and_drawn(tmp_path):
    class WithValidation(RegressionJob):
        def validation_loss(self):
            return float(((self.w - self.true) ** 2).sum())

    run_loop(opts(steps=10, validation_every=5), WithValidation(), tmp_path, RecordingReporter(), torch.device("cpu"))
    rows = (tmp_path / "loss.csv").read_text().strip().splitlines()
    assert rows[0] == "step,loss,lr,seconds,val_loss"
    values = [r.split(",")[-1] for r in rows[1:]]
    assert values[4] and values[9] and not values[0]
    assert float(values[9]) < float(values[4])

"""TensorBoard event files beside loss.csv: loss, learning rate, validation loss and previews; none (and no error)
without the package or with tensorboard off."""
import sys

import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from scal_sdt.training.loop import run_loop
from test_loop import RegressionJob, opts
from recording import RecordingReporter


class ValidatedJob(RegressionJob):
    def validation_loss(self):
        return float(((self.w - self.true) ** 2).sum())

    def preview(self, step):
        return [Image.new("RGB", (8, 8), (step * 10 % 255, 0, 0))], []


def events(run_dir):
    acc = EventAccumulator(str(run_dir), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    return acc


def test_loss_lr_validation_and_previews_are_written(tmp_path):
    o = opts(tmp_path, steps=12, validation_every=4, preview_every=6, lr_schedule="cosine")
    result = run_loop(o, ValidatedJob(), tmp_path, RecordingReporter(), torch.device("cpu"))
    acc = events(tmp_path)
    assert set(acc.Tags()["scalars"]) >= {"loss", "lr", "val_loss"}
    loss = acc.Scalars("loss")
    assert [e.step for e in loss] == list(range(1, 13))
    assert [round(e.value, 5) for e in loss] == [round(x, 5) for x in result.losses]  # the values loss.csv has
    assert [e.step for e in acc.Scalars("val_loss")] == [4, 8, 12]
    lrs = [e.value for e in acc.Scalars("lr")]
    assert lrs[0] > lrs[-1]  # the cosine decay, as scheduled
    assert [e.step for e in acc.Images("preview/0")] == [6, 12]


def test_a_resumed_run_continues_the_same_curve(tmp_path):
    run_loop(opts(tmp_path, steps=10), RegressionJob(), tmp_path, RecordingReporter(), torch.device("cpu"))
    run_loop(opts(tmp_path, steps=16, resume=True), RegressionJob(), tmp_path, RecordingReporter(),
             torch.device("cpu"))
    assert sorted(e.step for e in events(tmp_path).Scalars("loss")) == list(range(1, 17))


def test_skipped_cleanly_without_the_package_or_when_off(tmp_path, monkeypatch):
    run_loop(opts(tmp_path / "off", steps=3, tensorboard=False), RegressionJob(), tmp_path / "off",
             RecordingReporter(), torch.device("cpu"))
    assert not list((tmp_path / "off").glob("events.out.tfevents.*"))
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    result = run_loop(opts(tmp_path / "none", steps=3), RegressionJob(), tmp_path / "none", RecordingReporter(),
                      torch.device("cpu"))
    assert result.step == 3 and (tmp_path / "none" / "loss.csv").exists()
    assert not list((tmp_path / "none").glob("events.out.tfevents.*"))

"""A power cut while a run writes leaves a torn or empty file: every file a run writes, torn or emptied, still lets
``--resume`` reach the asked step, and what was skipped is said."""
import shutil

import pytest
import torch

from scal_sdt.demo_data import make_concept_folder
from scal_sdt.textual_inversion.config import EmbeddingConfig
from scal_sdt.textual_inversion.trainer import train_embedding
from scal_sdt.training.control import CONTROL_FILE
from scal_sdt.training.loop import run_loop
from scal_sdt.training.run_log import RunLog
from recording import RecordingReporter as Collect
from test_loop import RegressionJob, opts


def damage(path, how):
    data = path.read_bytes()
    path.write_bytes(b"" if how == "empty" else data[: max(1, len(data) // 2)])


def files_of(run_dir):
    return sorted(p.relative_to(run_dir) for p in run_dir.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A loop run of 8 steps with checkpoints at 4, 6 and 8, and a control file left behind."""
    run = tmp_path_factory.mktemp("run")
    res = run_loop(opts(run, steps=8, save_every=2, keep_checkpoints=3), RegressionJob(), run, Collect(),
                   torch.device("cpu"))
    assert res.step == 8
    (run / CONTROL_FILE).write_text("sample\n")
    return run


def test_the_run_wrote_the_files_this_test_damages(finished_run):
    names = {str(p) for p in files_of(finished_run)}
    assert {"loss.csv", "loss.png", CONTROL_FILE} <= names
    assert sum(n.endswith("state.pt") for n in names) == 3 and sum(n.endswith("COMPLETE") for n in names) == 3


@pytest.mark.parametrize("how", ["torn", "empty"])
def test_each_damaged_file_still_resumes_to_the_asked_step(finished_run, tmp_path, how):
    for i, name in enumerate(files_of(finished_run)):
        run = tmp_path / f"{how}-{i}"
        shutil.copytree(finished_run, run)
        damage(run / name, how)
        rep = Collect()
        res = run_loop(opts(run, steps=12, save_every=2, keep_checkpoints=3, resume=True), RegressionJob(), run, rep,
                       torch.device("cpu"))
        assert res.step == 12 and not res.interrupted, (name, rep.messages)
        rows = RunLog(run, resume_from=12, report=rep.message).rows
        assert rows[-1]["step"] == 12, name
        if name.name in ("state.pt", "COMPLETE") and name.parent.name.endswith("8"):
            assert any("skipped checkpoint" in m for m in rep.messages), (name, rep.messages)
            assert rows[0]["step"] == 1 and [r["step"] for r in rows] == list(range(1, 13)), name
        if name.name == "loss.csv" and how == "torn":
            assert any("unreadable row" in m for m in rep.messages), rep.messages


def test_a_torn_last_row_is_skipped_and_said(tmp_path):
    (tmp_path / "loss.csv").write_text("step,loss,lr,seconds,val_loss\n1,0.5,0.01,0.1,\n2,0.4,0.01,0.1,\n3,0.")
    said = []
    log = RunLog(tmp_path, resume_from=10, report=said.append)
    assert [r["step"] for r in log.rows] == [1, 2]
    assert said and "1 unreadable row" in said[0]
    (tmp_path / "loss.csv").write_bytes(b"step,loss,lr,seconds,val_loss\n1,0.5,0.01,0.1,\n\xff\xfe2,x")
    assert [r["step"] for r in RunLog(tmp_path, resume_from=10, report=said.append).rows] == [1]


def test_textual_inversion_resumes_past_a_torn_log_checkpoint_and_embedding(tmp_path, tiny_hosts):
    host = tiny_hosts("tiny-sd1")
    data = tmp_path / "data"
    make_concept_folder(data, count=4)
    base = dict(model="tiny-sd1", data=str(data), name="zq", lr="0.01", out=str(tmp_path / "emb"),
                log_dir=str(tmp_path / "run"), save_every=2, keep_checkpoints=3, preview_every=0, template="subject")
    first = train_embedding(EmbeddingConfig(steps=6, **base), host, Collect())
    run = tmp_path / "run"
    damage(run / "loss.csv", "torn")
    newest = sorted((run / "checkpoints").iterdir())[-1]
    damage(newest / "state.pt", "torn")
    damage(first.final_path, "empty")
    for copy in (run / "embeddings").iterdir():
        damage(copy, "torn")
    rep = Collect()
    res = train_embedding(EmbeddingConfig(steps=8, resume=True, **base), host, rep)
    assert res.step == 8 and res.final_path.stat().st_size > 0
    assert any("skipped checkpoint" in m for m in rep.messages)
    assert RunLog(run, resume_from=8, report=rep.message).rows[-1]["step"] == 8

"""`scal-sdt evaluate`: the suggested step (a pure function of the scores), the saved steps a run leaves and "keep
this one", and on the toy world a Textual Inversion run that overfits: the suggested step's held-out accuracy (the
judge) is within 0.05 of the best saved step's."""
from __future__ import annotations

import json

import pytest

from scal_sdt.evaluate.steps import saved_steps
from scal_sdt.evaluate.suggest import suggest


def test_the_suggested_step_balances_the_scores():
    rows = [{"step": 100, "fidelity": 0.2, "prompt": 0.40, "leakage": 0.0, "val_loss": None},
            {"step": 200, "fidelity": 0.5, "prompt": 0.38, "leakage": 0.0, "val_loss": None},
            {"step": 300, "fidelity": 0.6, "prompt": 0.20, "leakage": 0.0, "val_loss": None}]
    step, why = suggest(rows)
    # scaled: fidelity 0, .75, 1; prompt 1, .9, 0 -> merits .5, .825, .5; leakage never varies and is left out
    assert step == 200 and "fidelity" in why and "leakage" not in why
    assert suggest([{"step": 5, "fidelity": 0.3}, {"step": 9, "fidelity": 0.3}])[0] == 9  # nothing tells: the last
    tie = [{"step": 1, "val_loss": 0.2, "fidelity": 0.1}, {"step": 2, "val_loss": 0.1, "fidelity": 0.0}]
    assert suggest(tie)[0] == 1  # equal merit: the earlier step
    with pytest.raises(ValueError, match="save_every"):
        suggest([])


def fake_run(tmp_path, method="embedding"):
    run = tmp_path / "run"
    cfg = {"name": "x", "out": str(tmp_path / "out"), "format": "safetensors", "model": "toy", "data": ""}
    folder = {"embedding": "embeddings", "lora": "lora", "hypernetwork": "hypernetworks", "dreambooth": "models"}[method]
    suffix = ".pt" if method == "hypernetwork" else ".safetensors"
    for step in (50, 100):
        (run / folder).mkdir(parents=True, exist_ok=True)
        (run / folder / f"x-{step}{suffix}").write_bytes(b"step %d" % step)
    (run / folder / "x-unet-50.safetensors").write_bytes(b"not ours")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / f"x{suffix}").write_bytes(b"final")
    (run / "loss.csv").write_text("step,loss,lr,seconds,val_loss\n149,0.1,0.1,1,\n150,0.1,0.1,1,0.2\n")
    (run / "run.json").write_text(json.dumps({"method": method, "config": cfg, "family": "sd1", "resolution": 64}))
    return run, cfg


@pytest.mark.parametrize("method", ["embedding", "lora", "hypernetwork"])
def test_saved_steps_and_keep_this_one(tmp_path, method):
    from scal_sdt.cli import main

    run, cfg = fake_run(tmp_path, method)
    steps = saved_steps(run, method, cfg)
    assert [(s.step, s.final) for s in steps] == [(50, False), (100, False), (150, True)]
    suffix = ".pt" if method == "hypernetwork" else ".safetensors"
    assert main(["evaluate", str(run), "--keep", "50"]) == 0
    assert (tmp_path / "out" / f"x{suffix}").read_bytes() == b"step 50"
    assert main(["evaluate", str(run), "--keep", "70"]) == 2  # not a saved step: refused, nothing changed
    assert (tmp_path / "out" / f"x{suffix}").read_bytes() == b"step 50"


def test_a_folder_that_is_no_run_is_refused_in_one_line(tmp_path, capsys):
    from scal_sdt.cli import main

    assert main(["evaluate", str(tmp_path)]) == 2
    assert "run.json" in capsys.readouterr().err


def test_every_training_tab_has_check_data_and_the_evaluate_panel_below_the_loss_plot(tmp_path):
    pytest.importorskip("gradio")
    from scal_sdt.textual_inversion.config import EmbeddingConfig
    from scal_sdt.ui.standalone import build_app
    from scal_sdt.ui_config import UiConfig

    app = build_app(UiConfig(model="tiny-sd1"))
    blocks = list(app.blocks.values())
    ids = [getattr(b, "elem_id", None) for b in blocks]
    for prefix in ("scal_sdt_ti", "scal_sdt_hn", "scal_sdt_db", "scal_sdt_lora"):
        for part in ("check", "check_picture", "data_source", "evaluate", "evaluate_grid", "keep", "keep_step"):
            assert f"{prefix}_{part}" in ids, (prefix, part)
        assert ids.index(f"{prefix}_plot") < ids.index(f"{prefix}_evaluate_grid")
    run, _ = fake_run(tmp_path)
    cfg = EmbeddingConfig(name="x", log_dir=str(run))
    assert app.scal_sdt_trainer.keep(cfg, 100).read_bytes() == b"step 100"

"""`scal-sdt evaluate`: the suggested step (a pure function of the scores), the saved steps a run leaves and "keep
this one", and on the toy world a Textual Inversion run that overfits: the suggested step's held-out accuracy (the
judge) is within 0.05 of the best saved step's."""
from __future__ import annotations

import json
import os

import pytest

from scal_sdt.evaluate.steps import saved_steps
from scal_sdt.evaluate.suggest import suggest

#: the overfitting Textual Inversion run of the toy test (bench/evaluate_toy.py's, saving every 100 steps)
OVERFIT = dict(steps=400, lr="0.05", batch_size=8, save_every=100)
#: the CI-sized run: a rate far too high, the embedding learns pink and swings away
CHEAP_OVERSHOOT = dict(steps=120, lr="0.15", batch_size=4, save_every=40)
PROMPTS = "a large [name] star on a white background|a large [name] circle on a blue background"
HELD_OUT_PROMPTS = 32


def test_the_suggested_step_is_the_most_faithful_that_pays_little():
    rows = [{"step": 100, "fidelity": 0.20, "prompt": 0.40, "leakage": 0.00, "val_loss": None},
            {"step": 200, "fidelity": 0.50, "prompt": 0.38, "leakage": 0.02, "val_loss": None},
            {"step": 300, "fidelity": 0.60, "prompt": 0.30, "leakage": 0.03, "val_loss": None},
            {"step": 400, "fidelity": 0.70, "prompt": 0.39, "leakage": 0.20, "val_loss": None}]
    step, why = suggest(rows)
    # 300 lost a quarter of its prompt match, 400 leaks: of 100 and 200, 200 is the more faithful
    assert step == 200 and "300, 400 pay" in why and "prompt match" in why and "leakage" in why
    assert suggest([{"step": 5, "val_loss": 0.3}, {"step": 9, "val_loss": 0.2}])[0] == 9  # no fidelity: the loss
    assert suggest([{"step": 5}, {"step": 9}]) == (9, "no scores to tell the steps apart: the last step")
    tie = [{"step": 1, "fidelity": 0.1}, {"step": 2, "fidelity": 0.1}]
    assert suggest(tie)[0] == 1  # equal fidelity: the earlier step
    with pytest.raises(ValueError, match="save_every"):
        suggest([])


def test_prompt_match_compares_the_grid_prompts_so_the_concepts_own_look_cancels():
    """Each picture against the grid's prompts (the name left out): a look every picture shares (the learnt concept)
    leaves it unchanged; pictures that draw the training images whatever the prompt says fall to chance."""
    import torch

    from scal_sdt.evaluate.scores import prompt_match

    def unit(v):
        return v / v.norm(dim=-1, keepdim=True)

    texts = torch.eye(3)[:2]  # two prompts
    own = [0, 0, 1, 1]
    drawn = unit(torch.stack([texts[0], texts[0], texts[1], texts[1]]) * 0.4 + torch.tensor([0.0, 0.0, 0.3]))
    concept = torch.tensor([0.0, 0.0, 1.0])  # the concept's own direction, shared by every picture
    with_concept = unit(drawn + concept)
    taken_over = unit(torch.tensor([[0.1, 0.1, 1.0]] * 4))  # the same picture whatever the prompt
    assert prompt_match(drawn, texts, own, 100.0) > 0.99
    # the shared look lowers every picture's cosine to its own text, yet each still matches its own prompt best
    assert (with_concept * texts[own]).sum(-1).mean() < (drawn * texts[own]).sum(-1).mean() - 0.1
    assert prompt_match(with_concept, texts, own, 100.0) > 0.95
    assert abs(prompt_match(taken_over, texts, own, 100.0) - 0.5) < 1e-6  # chance
    assert prompt_match(drawn, texts[:1], [0, 0, 0, 0], 100.0) is None  # one prompt: nothing to compare with


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
        for part in ("check", "check_picture", "data_source", "evaluate_start", "evaluate_grid", "keep", "keep_step"):
            assert f"{prefix}_{part}" in ids, (prefix, part)
        assert ids.index(f"{prefix}_plot") < ids.index(f"{prefix}_evaluate_grid")
    # one element per id: the Evaluate button once shared its id with the form's "evaluate" checkbox, and a click
    # on the page found the checkbox
    twice = sorted({i for i in ids if i and i.startswith("scal_sdt_") and ids.count(i) > 1})
    assert twice == [], twice
    run, _ = fake_run(tmp_path)
    cfg = EmbeddingConfig(name="x", log_dir=str(run))
    assert app.scal_sdt_trainer.keep(cfg, 100).read_bytes() == b"step 100"


def judged_run(tmp_path, run: dict, sample_steps: int = 20) -> tuple[object, dict[int, float]]:
    """A Textual Inversion run on the toy world's 16 pink pictures with ``run``'s settings, evaluated (2 prompts x 2
    seeds, toy CLIP): (the evaluation, each saved step's held-out colour accuracy by the judge on
    :data:`HELD_OUT_PROMPTS` prompts of pink shapes on backgrounds), pictures drawn with ``sample_steps``."""
    from scal_sdt import runs
    from scal_sdt.evaluate.apply import step_applied
    from scal_sdt.evaluate.config import EvaluateConfig
    from scal_sdt.evaluate.run import evaluate_run
    from scal_sdt.host.standalone import load_host
    from scal_sdt.textual_inversion.config import EmbeddingConfig
    from scal_sdt.toy_world.build import JUDGE, PRETRAINED
    from scal_sdt.toy_world.concepts import make_held_out_colour_set
    from scal_sdt.toy_world.judge import Judge
    from scal_sdt.toy_world.quality import prompt_accuracy, prompt_set
    from scal_sdt.toy_world.world import HELD_OUT, SHAPES
    from scal_sdt.training.report import Reporter

    data = tmp_path / "pink"
    make_held_out_colour_set(data, 16, seed=5)
    host = load_host("toy", device="cpu")
    cfg = EmbeddingConfig(model="toy", data=str(data), name="toypink", init_text="red", template="filewords",
                          **run, out=str(tmp_path / "out"), log_dir=str(tmp_path / "run"), preview_every=0,
                          device="cpu", seed=1)
    runs.train(runs.prepare(cfg, host), Reporter())
    result = evaluate_run(EvaluateConfig(run_dir=str(tmp_path / "run"), prompts=PROMPTS, images=2,
                                         sample_steps=sample_steps), host, say=lambda _: None)
    assert (tmp_path / "run" / "evaluation" / "grid.png").is_file() and result.files["page"].is_file()
    triples = prompt_set(HELD_OUT_PROMPTS, seed=77, shapes=[s for s in SHAPES if s != HELD_OUT["shape"]],
                         colours=[HELD_OUT["colour"]])
    judge = Judge.load(PRETRAINED / JUDGE)
    accuracy = {}
    tcfg = json.loads((tmp_path / "run" / "run.json").read_text())["config"]
    for saved in saved_steps(tmp_path / "run", "embedding", tcfg):
        with step_applied("embedding", saved, host, "toypink") as (model, emb):
            accuracy[saved.step] = prompt_accuracy(model, judge, triples, seed=9, embeddings=emb, steps=sample_steps,
                                                   colour_words={HELD_OUT["colour"]: "toypink"})["colour"]
    return result, accuracy


def test_on_the_toy_world_a_run_that_overshoots_the_suggested_step_is_the_judges_best(tmp_path):
    """CI-sized: a Textual Inversion run at a rate far too high for 16 pictures (0.15) learns pink by step 40 and
    then swings away from it (the pictures turn brown and back, never pink again: the judge's held-out colour
    accuracy 0.25 at step 40, 0.03 and 0 after; 0.34, 0.03, 0 with 20 sampling steps). The suggested step is within
    0.05 of the best saved step's accuracy — here only step 40 is, so the test fails if the rule picks another.
    Fidelity finds it; prompt match, measured against the grid's other prompts, does not hold it back (measured
    against the prompt's text alone it was lowest at step 40: pink moves every picture away from a text without its
    name, and the rule picked a brown step). About 50 s of one idle core: imports 8, training 15, evaluating 8,
    judging 17."""
    result, accuracy = judged_run(tmp_path, CHEAP_OVERSHOOT, sample_steps=12)
    print(f"judge: {accuracy}; suggested {result.suggested}: {result.reason}; scores: {result.rows}")
    assert sorted(accuracy) == [40, 80, 120] and result.suggested in accuracy
    best = max(accuracy.values())
    assert best >= 0.15, accuracy  # the run learnt pink at all: else there is nothing to choose
    assert best - accuracy[result.suggested] <= 0.05, (result.suggested, accuracy, result.reason, result.rows)


@pytest.mark.skipif(not os.environ.get("SCAL_SDT_SLOW_TESTS"),
                    reason="about 4 minutes of CPU (a 400-step run, 4 steps evaluated, 128 pictures judged): over the "
                           "CI budget; SCAL_SDT_SLOW_TESTS=1 runs it; the README's table is its measurement")
def test_on_the_toy_world_the_suggested_step_is_within_005_of_the_best_held_out_accuracy(tmp_path):
    """A Textual Inversion run that overfits the 16 pink pictures (a high rate, many steps for so few images) saves
    every STEPS // 4 steps; the suggested step's held-out accuracy (the judge: shape and colour both right on
    prompts of pink shapes) is within 0.05 of the best saved step's. Measured: see the README's table."""
    result, accuracy = judged_run(tmp_path, OVERFIT)
    assert len(accuracy) == 4 and result.suggested in accuracy
    assert max(accuracy.values()) - accuracy[result.suggested] <= 0.05, (result.suggested, accuracy, result.reason)


def test_an_aesthetic_embedding_is_a_grid_axis_over_its_weights(tmp_path):
    """`--aesthetic NAME --aesthetic-weights 0,0.5`: every saved step is drawn at each weight (a grid row each);
    weight 0 draws the step's own pictures, pixel for pixel, and the scores are measured there; 0.5 changes them."""
    import numpy as np
    from PIL import Image

    from scal_sdt import runs
    from scal_sdt.aesthetic.config import AestheticEmbeddingConfig
    from scal_sdt.aesthetic.make import make_aesthetic_embedding
    from scal_sdt.evaluate.config import EvaluateConfig
    from scal_sdt.evaluate.run import evaluate_run
    from scal_sdt.host.standalone import load_host
    from scal_sdt.textual_inversion.config import EmbeddingConfig
    from scal_sdt.toy_world.concepts import make_held_out_colour_set
    from scal_sdt.training.report import Reporter

    make_held_out_colour_set(tmp_path / "pink", 4, seed=5)
    make_held_out_colour_set(tmp_path / "look", 4, seed=6)
    make_aesthetic_embedding(AestheticEmbeddingConfig(images=str(tmp_path / "look"), name="look",
                                                      out=str(tmp_path / "ae")))
    host = load_host("toy", device="cpu")
    runs.train(runs.prepare(EmbeddingConfig(model="toy", data=str(tmp_path / "pink"), name="toypink", steps=4,
                                            save_every=2, batch_size=2, out=str(tmp_path / "out"),
                                            log_dir=str(tmp_path / "run"), preview_every=0, device="cpu", seed=1),
                            host), Reporter())
    options = dict(run_dir=str(tmp_path / "run"), prompts="a large [name] star on a white background", images=1,
                   sample_steps=4)
    plain = evaluate_run(EvaluateConfig(**options, out=str(tmp_path / "plain")), host, say=lambda _: None)
    looked = evaluate_run(EvaluateConfig(**options, out=str(tmp_path / "looked"), aesthetic="look",
                                         aesthetic_dir=str(tmp_path / "ae"), aesthetic_weights="0,0.5",
                                         aesthetic_steps=10, aesthetic_lr=1e-3), host, say=lambda _: None)
    assert looked.rows == plain.rows and [r["step"] for r in plain.rows] == [2, 4]  # measured at weight 0
    saved = json.loads(looked.files["scores"].read_text())
    assert saved["aesthetic"] == "look" and saved["aesthetic_weights"] == [0.0, 0.5]

    def cells(result, n_rows):  # the grid's picture rows, labels left out (120 px), 64 px pictures shown at 128
        grid = np.asarray(Image.open(result.files["grid"]).convert("RGB"), dtype=np.float32)
        top = grid.shape[0] - 128 * n_rows
        return [grid[top + 128 * i:top + 128 * (i + 1), 120:] for i in range(n_rows)]

    mine, theirs = cells(plain, 2), cells(looked, 4)  # step 2; step 2 at 0.5; step 4; step 4 at 0.5
    assert np.array_equal(mine[0], theirs[0]) and np.array_equal(mine[1], theirs[2])
    assert np.abs(theirs[1] - theirs[0]).mean() > 0.5 and np.abs(theirs[3] - theirs[2]).mean() > 0.5

"""The standalone page (`scal-sdt ui`): the same form, built from the config, and a training that streams."""
import dataclasses
import json
import socket
import urllib.request

import pytest

gr = pytest.importorskip("gradio", reason="the standalone page needs gradio (pip install 'scal-sdt[ui]')")

from scal_sdt.textual_inversion.config import EmbeddingConfig  # noqa: E402
from scal_sdt.ui.standalone import build_app  # noqa: E402
from scal_sdt.ui_config import UiConfig  # noqa: E402


def test_the_page_has_a_component_for_every_option_but_the_hosts():
    app = build_app(UiConfig(model="tiny-sd1"))
    ids = {getattr(b, "elem_id", None) for b in app.blocks.values()}
    for f in dataclasses.fields(EmbeddingConfig):
        if f.name not in ("model", "device", "memory_mode"):
            assert f"scal_sdt_ti_{f.name}" in ids, f.name
    assert {"scal_sdt_ti_start", "scal_sdt_ti_interrupt", "scal_sdt_ti_plot", "scal_sdt_ti_preview"} <= ids


def _component(app, elem_id):
    return next(b for b in app.blocks.values() if getattr(b, "elem_id", None) == elem_id)


def test_the_demo_previews_the_concept_large_on_white():
    """The demo's captions vary (small shapes on brown...): its previews draw the concept where it can be seen."""
    app = build_app(UiConfig())
    assert _component(app, "scal_sdt_ti_preview_prompt").value == "a large [name] star on a white background"
    assert _component(app, "scal_sdt_ti_data").value == "demo"


def test_training_from_the_page_streams_progress_and_saves(tmp_path):
    app = build_app(UiConfig(model="tiny-sd1", out=str(tmp_path / "emb")))
    cfg = EmbeddingConfig(name="pagetest", data="demo", steps=6, out=str(tmp_path / "emb"),
                          log_dir=str(tmp_path / "run"), save_every=0, preview_every=3, preview_steps=2)
    updates = list(app.scal_sdt_trainer.run(cfg))
    last = updates[-1]
    assert "pagetest" in last["text"] and "finished at step 6" in last["text"]
    assert last["plot"].endswith("loss.png") and last["preview"].endswith("pagetest-6.png")
    assert "<svg" in last["progress"]
    assert (tmp_path / "emb" / "pagetest.safetensors").exists()


def test_the_page_serves_on_localhost():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = build_app(UiConfig(model="tiny-sd1", port=port))
    app.queue()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=30) as r:
            config = json.load(r)
        ids = [c.get("props", {}).get("elem_id") for c in config["components"]]
        assert "scal_sdt_ti_start" in ids and "scal_sdt_ti_lr" in ids
    finally:
        app.close()


def test_the_steer_buttons_reach_the_running_training(tmp_path):
    app = build_app(UiConfig(model="tiny-sd1", out=str(tmp_path / "emb")))
    trainer = app.scal_sdt_trainer
    cfg = EmbeddingConfig(name="steered", data="demo", steps=400, out=str(tmp_path / "emb"),
                          log_dir=str(tmp_path / "run"), save_every=0, preview_every=0, preview_steps=2)
    asked = False
    for update in trainer.run(cfg):
        if not asked and "step " in update["progress"] and not update["progress"].startswith("step 0/"):
            trainer.steer("save")
            trainer.steer("sample")
            asked = True
        if asked and list((tmp_path / "run" / "images").glob("steered-*.png")):
            trainer.interrupt()
    assert asked
    assert list((tmp_path / "run" / "embeddings").glob("steered-*.safetensors"))  # "save now"
    assert list((tmp_path / "run" / "images").glob("steered-*.png"))  # "sample now"
    assert "interrupted" in update["text"]


def test_generate_tab_uses_a_new_embedding_at_once(tmp_path):
    """The demo as a user does it on the toy model: generate, train on the demo data, generate with the name."""
    import numpy as np
    from PIL import Image

    from scal_sdt.generate.config import GenerateConfig

    app = build_app(UiConfig(out=str(tmp_path / "emb")))  # the default model: toy
    ids = {getattr(b, "elem_id", None) for b in app.blocks.values()}
    assert {"scal_sdt_gen_start", "scal_sdt_gen_gallery", "scal_sdt_gen_prompt", "scal_sdt_gen_embeddings"} <= ids
    trainer = app.scal_sdt_trainer
    prompt = "a large demo-pink circle on a white background"
    gen = GenerateConfig(prompt=prompt, n=1, seed=3, embeddings=str(tmp_path / "emb"), out=str(tmp_path / "out"))
    before, _ = trainer.generate(gen)
    cfg = EmbeddingConfig(name="demo-pink", data="demo", template="filewords", steps=40, out=str(tmp_path / "emb"),
                          log_dir=str(tmp_path / "run"), save_every=0, preview_every=0)
    list(trainer.run(cfg))
    after, text = trainer.generate(dataclasses.replace(gen, out=str(tmp_path / "out2")))
    assert "1 image(s)" in text
    a, b = (np.asarray(Image.open(p[0]), dtype=np.float32) for p in (before, after))
    assert np.abs(a - b).mean() > 2.0  # the name now means the learned vectors


def test_tagger_tab_tags_a_folder_and_streams_progress(tmp_path):
    from scal_sdt.tagging.config import TagConfig
    from scal_sdt.toy_world.world import make_dataset

    app = build_app(UiConfig(model="tiny-sd1"))
    ids = {getattr(b, "elem_id", None) for b in app.blocks.values()}
    assert {"scal_sdt_tag_start", "scal_sdt_tag_stop", "scal_sdt_tag_unload", "scal_sdt_tag_dir",
            "scal_sdt_tag_general_threshold", "scal_sdt_tag_mcut_general"} <= ids
    data = tmp_path / "data"
    make_dataset(data, 12, seed=4)
    for p in data.glob("*.txt"):
        p.unlink()
    (data / "bad.png").write_bytes(b"broken")
    updates = list(app.scal_sdt_tagger.run(TagConfig(dir=str(data), model="toy", cache_dir="")))
    job, report = updates[-1]
    assert job.status == "finished" and report.written == 12 and len(report.failed) == 1
    assert len(list(data.glob("*.txt"))) == 12
    from scal_sdt.ui.tagger_tab import report_html

    page = report_html(report)
    assert "bad.png" in page and "simple background" in page and "images/s" in page
    assert app.scal_sdt_tagger.unload().startswith("unloaded")


def test_clean_section_of_the_tagger_tab(tmp_path):
    from PIL import Image

    from scal_sdt.tagging.clean import CleanConfig
    from scal_sdt.ui.tagger_tab import clean_report_html

    app = build_app(UiConfig(model="tiny-sd1"))
    ids = {getattr(b, "elem_id", None) for b in app.blocks.values()}
    assert {"scal_sdt_clean_start", "scal_sdt_clean_face_crop", "scal_sdt_clean_duplicates"} <= ids
    data = tmp_path / "data"
    data.mkdir()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(data / "a.png")
    Image.new("RGB", (32, 32), (200, 10, 10)).save(data / "b.png")
    job, report = list(app.scal_sdt_tagger.run(CleanConfig(dir=str(data), duplicates=True)))[-1]
    assert job.status == "finished" and report.duplicate_groups == [[str(data / "a.png"), str(data / "b.png")]]
    assert "Duplicates" in clean_report_html(report)


def _handler(app, elem_id, event="click"):
    """The function the page runs when ``elem_id`` fires ``event`` (what a click in the browser calls)."""
    ids = {block_id: getattr(block, "elem_id", None) for block_id, block in app.blocks.items()}
    for fn in app.fns.values():
        if any(ids.get(t) == elem_id and ev == event for t, ev in fn.targets):
            return fn.fn
    raise KeyError(f"no {event} handler on {elem_id}")


def test_dataset_editor_from_the_page(tmp_path):
    """Load a folder, filter, bulk-add to the filtered set, click a tag in the frequency panel, edit one caption,
    undo — through the page's own handlers, as the buttons call them."""
    from types import SimpleNamespace

    from PIL import Image

    data = tmp_path / "d"
    data.mkdir()
    for i, text in enumerate(["1girl, smile", "1boy, smile", "1girl, frown", None]):
        Image.new("RGB", (64, 48), (40 * i, 90, 90)).save(data / f"{i}.png")
        if text:
            (data / f"{i}.txt").write_text(text)
    vocab = tmp_path / "tags.csv"
    vocab.write_text("smiling_face,0,10,\nsmile,0,900,\n")
    app = build_app(UiConfig(model="tiny-sd1"))
    ids = {getattr(b, "elem_id", None) for b in app.blocks.values()}
    assert {"scal_sdt_edit_gallery", "scal_sdt_edit_filter", "scal_sdt_edit_frequency", "scal_sdt_edit_undo",
            "scal_sdt_edit_scope", "scal_sdt_edit_untagged"} <= ids

    s, gallery, freq, caption, label, status, page = _handler(app, "scal_sdt_edit_load")(None, str(data), ".txt",
                                                                                         str(vocab))
    assert len(gallery) == 4 and "4 of 4 images match" in status and ["smile", 2] in freq
    s, gallery, *_ = _handler(app, "scal_sdt_edit_apply_filter")(s, "smile and not 1boy")
    assert len(gallery) == 1
    s, *_, status, _ = _handler(app, "scal_sdt_edit_add_end")(s, "filtered", "happy")
    assert (data / "0.txt").read_text() == "1girl, smile, happy" and (data / "1.txt").read_text() == "1boy, smile"
    s, gallery, freq, *_ = _handler(app, "scal_sdt_edit_apply_filter")(s, "")
    row = [t for t, _ in freq].index("frown")
    s, gallery, *_ = _handler(app, "scal_sdt_edit_frequency", "select")(s, SimpleNamespace(index=[row, 0]))
    assert len(gallery) == 1 and s.query == "frown"
    s, *_ = _handler(app, "scal_sdt_edit_untagged")(s)
    s, _, _, caption, label, *_ = _handler(app, "scal_sdt_edit_save")(s, "new, caption")
    assert (data / "3.txt").read_text() == "new, caption" and label.startswith("4/4")
    s, *_, status, _ = _handler(app, "scal_sdt_edit_undo")(s)
    assert (data / "3.txt").read_text() == "" and "undid edit caption" in status
    suggestions = _handler(app, "scal_sdt_edit_tags", "change")(s, "1girl, smi")
    choices = suggestions["choices"] if isinstance(suggestions, dict) else suggestions.choices
    assert [c[0] if isinstance(c, (list, tuple)) else c for c in choices][:2] == ["smile", "smiling face"]
    s, *_, status, _ = _handler(app, "scal_sdt_edit_add_end")(s, "selection", "x")
    assert "selection is empty" in status  # refused with the reason; nothing written


def test_dreambooth_from_the_page_keeps_the_pages_model(tmp_path):
    """The DreamBooth tab writes a checkpoint and leaves the page's own model as it was (Generate still draws
    the same)."""
    import torch

    from scal_sdt.dreambooth.config import DreamBoothConfig
    from scal_sdt.toy_world.concepts import make_held_out_colour_set

    app = build_app(UiConfig(model="tiny-sd1", checkpoints=str(tmp_path / "ckpt")))
    ids = {getattr(b, "elem_id", None) for b in app.blocks.values()}
    assert {"scal_sdt_db_start", "scal_sdt_db_instance_prompt", "scal_sdt_db_prior_loss_weight"} <= ids
    make_held_out_colour_set(tmp_path / "inst", 2, seed=3)
    host = app.scal_sdt_trainer.host()
    before = {k: v.clone() for k, v in host.components.unet.state_dict().items()}
    cfg = DreamBoothConfig(name="pagedb", instance_data=str(tmp_path / "inst"), instance_prompt="a photo of sks",
                           steps=2, lr="1e-3", resolution=64, out=str(tmp_path / "ckpt"), log_dir=str(tmp_path / "run"),
                           preview_every=0)
    last = list(app.scal_sdt_trainer.run(cfg))[-1]
    assert "Checkpoint <b>pagedb</b> finished at step 2" in last["text"]
    assert (tmp_path / "ckpt" / "pagedb.safetensors").exists()
    after = host.components.unet.state_dict()
    assert all(torch.equal(before[k], after[k]) and before[k].dtype == after[k].dtype for k in before)


def test_a_reloaded_page_reattaches_to_the_running_training(tmp_path):
    """The page that started a training goes away (a reload closes its stream): the training runs on, holds the
    model, and a page opened now follows it to the end and lists it."""
    app = build_app(UiConfig(model="tiny-sd1", out=str(tmp_path / "emb")))
    trainer = app.scal_sdt_trainer
    assert list(trainer.attach("embedding")) == [{"text": "", "progress": "", "plot": None, "preview": None,
                                                  "jobs": ""}]
    cfg = EmbeddingConfig(name="reload", data="demo", steps=30, out=str(tmp_path / "emb"),
                          log_dir=str(tmp_path / "run"), save_every=0, preview_every=10, preview_steps=1)
    first_page = trainer.run(cfg)
    next(first_page)
    first_page.close()  # the browser reloads
    with pytest.raises(RuntimeError, match="already running"):
        next(trainer.run(cfg))
    seen = list(trainer.attach("embedding"))
    assert "running" in seen[0]["jobs"] and "reload" in seen[0]["jobs"]
    assert "finished at step 30" in seen[-1]["text"] and "finished" in seen[-1]["jobs"]
    assert seen[-1]["plot"].endswith("loss.png") and seen[-1]["preview"].endswith("reload-30.png")
    assert list(trainer.attach("hypernetwork"))[0]["plot"] is None  # another tab's own latest: none yet
    assert (tmp_path / "emb" / "reload.safetensors").exists()


def test_a_new_run_starts_with_an_empty_plot(tmp_path):
    """Training again under the same name (its log folder holds the last run's loss.png and previews): the page
    shows no plot and no preview until this run writes its own."""
    app = build_app(UiConfig(model="tiny-sd1", out=str(tmp_path / "emb")))
    trainer = app.scal_sdt_trainer
    cfg = EmbeddingConfig(name="again", data="demo", steps=4, out=str(tmp_path / "emb"), log_dir=str(tmp_path / "run"),
                          save_every=0, preview_every=2, preview_steps=1, overwrite=True)
    assert list(trainer.run(cfg))[-1]["plot"] is not None
    assert (tmp_path / "run" / "loss.png").exists()  # the last run's curve, still on disk
    updates = list(trainer.run(cfg))
    assert updates[0]["plot"] is None and updates[0]["preview"] is None and "step 0/4" in updates[0]["progress"]
    assert updates[-1]["plot"] is not None and "<td>2</td>" in updates[-1]["jobs"]


def _descendants(block):
    for child in getattr(block, "children", []):
        yield child
        yield from _descendants(child)


def test_the_training_form_puts_the_basics_first_and_the_rest_in_closed_groups():
    app = build_app(UiConfig(model="tiny-sd1"))
    basic = _component(app, "scal_sdt_ti_basic")
    shown = [b.elem_id for b in _descendants(basic) if (b.elem_id or "").startswith("scal_sdt_ti_")
             and not b.elem_id.endswith(("_browse", "_folders"))]
    assert shown == ["scal_sdt_ti_name", "scal_sdt_ti_data", "scal_sdt_ti_init_text", "scal_sdt_ti_task_preset",
                     "scal_sdt_ti_steps", "scal_sdt_ti_lr", "scal_sdt_ti_preset"]
    groups = [b for b in app.blocks.values() if (b.elem_id or "").startswith("scal_sdt_ti_group_")]
    assert {g.label for g in groups} >= {"embedding", "model and data", "optimisation", "memory", "output"}
    assert not any(g.open for g in groups)  # advanced options: one closed accordion per option group
    inside = {b.elem_id for g in groups for b in _descendants(g)}
    assert {"scal_sdt_ti_resolution", "scal_sdt_ti_out", "scal_sdt_ti_preview_prompt"} <= inside
    assert "scal_sdt_ti_name" not in inside
    # every folder field has a picker
    ids = {getattr(b, "elem_id", None) for b in app.blocks.values()}
    for field in ("scal_sdt_ti_data", "scal_sdt_ti_out", "scal_sdt_ti_log_dir", "scal_sdt_db_instance_data",
                  "scal_sdt_gen_out", "scal_sdt_tag_dir"):
        assert f"{field}_browse" in ids and f"{field}_folders" in ids, field


def test_the_folder_picker_lists_sub_folders_and_goes_up(tmp_path):
    from scal_sdt.ui.folders import sub_folders

    for name in ("b", "A", ".hidden"):
        (tmp_path / "d" / name).mkdir(parents=True)
    (tmp_path / "d" / "file.png").write_bytes(b"x")
    d = str(tmp_path / "d")
    assert sub_folders(d) == [str(tmp_path), f"{d}/A", f"{d}/b"]
    assert sub_folders(f"{d}/not-made-yet/x") == sub_folders(d)  # the nearest folder above
    app = build_app(UiConfig(model="tiny-sd1"))
    shown = _handler(app, "scal_sdt_ti_data_browse")(d)
    choices = shown["choices"] if isinstance(shown, dict) else shown.choices
    assert [c[0] if isinstance(c, (list, tuple)) else c for c in choices] == sub_folders(d)
    value, listing = _handler(app, "scal_sdt_ti_data_folders", "select")(f"{d}/A")
    assert value == f"{d}/A"


def test_the_tagger_offers_the_demo_pictures_and_leads_into_the_editor(tmp_path, monkeypatch):
    """One click writes the toy world's untagged pictures and fills the folder; after tagging, Clean's and the
    editor's folder fields hold the tagged folder and the editor has it open."""
    import scal_sdt.ui.standalone as page

    monkeypatch.setattr(page, "TAGGER_DEMO_FOLDER", str(tmp_path / "demo"))
    app = build_app(UiConfig(model="tiny-sd1"))
    folder = _handler(app, "scal_sdt_tag_demo")()
    assert folder == str(tmp_path / "demo") and len(list((tmp_path / "demo").glob("*.png"))) == 16
    assert not list((tmp_path / "demo").glob("*.txt"))
    tag_click = next(fn for fn in app.fns.values() if any(
        getattr(app.blocks.get(t), "elem_id", None) == "scal_sdt_tag_start" for t, _ in fn.targets))
    ids = {i: getattr(b, "elem_id", None) for i, b in app.blocks.items()}
    chained = [fn for fn in app.fns.values() if getattr(fn, "trigger_after", None) == tag_click._id]
    assert chained, "nothing follows the tag run"
    fill = chained[0]
    assert [ids[getattr(o, "_id", o)] for o in fill.outputs] == ["scal_sdt_clean_dir", "scal_sdt_edit_dir"]
    assert fill.fn(folder) == (folder, folder)
    then_load = [fn for fn in app.fns.values() if getattr(fn, "trigger_after", None) == fill._id]
    assert then_load and ids[getattr(then_load[0].outputs[1], "_id", then_load[0].outputs[1])] == "scal_sdt_edit_gallery"
    to_edit = _handler(app, "scal_sdt_tag_to_edit")(folder)
    assert to_edit[0] == folder


def test_lora_tab_trains_a_lora_and_leaves_the_pages_model_untouched(tmp_path):
    import torch

    from scal_sdt.lora.config import LoraConfig
    from scal_sdt.toy_world.concepts import make_held_out_colour_set

    app = build_app(UiConfig(model="tiny-sd1", loras=str(tmp_path / "Lora")))
    ids = {getattr(b, "elem_id", None) for b in app.blocks.values()}
    assert {"scal_sdt_lora_start", "scal_sdt_lora_network", "scal_sdt_lora_rank", "scal_sdt_lora_block_dims"} <= ids
    make_held_out_colour_set(tmp_path / "inst", 2, seed=3)
    host = app.scal_sdt_trainer.host()
    before = {k: v.clone() for k, v in host.components.unet.state_dict().items()}
    cfg = LoraConfig(name="pagelora", instance_data=str(tmp_path / "inst"), network="loha", rank=2, steps=2, lr="1e-3",
                     resolution=32, out=str(tmp_path / "Lora"), log_dir=str(tmp_path / "run"), preview_every=0)
    last = list(app.scal_sdt_trainer.run(cfg))[-1]
    assert "<b>pagelora</b> finished at step 2" in last["text"]
    assert (tmp_path / "Lora" / "pagelora.safetensors").exists()
    after = host.components.unet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)

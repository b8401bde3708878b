"""The library on tiny-sd1: every kind listed with its fit (a mismatch with the reason), search and filter, and the
A/B previews of a trained embedding, a hypernetwork and a LoRA: different from the plain image, and read back from
the cache the second time."""
import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

from scal_sdt.cli import main
from scal_sdt.library.catalogue import scan, select
from scal_sdt.library.previews import PreviewSettings, previews

SETTINGS = PreviewSettings(prompt="a picture", seed=3, steps=2, size=32)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One preview cache for the module: what one test renders, the next reads back."""
    return tmp_path_factory.mktemp("previews")


@pytest.fixture(scope="module")
def shelf(tmp_path_factory, tiny_hosts):
    """A WebUI-like models tree: a trained embedding, one for SD2's width, a hypernetwork, a LoRA, a checkpoint
    stand-in and a plain picture."""
    from safetensors.torch import save_file
    from scal_sdt.demo_data import make_concept_folder
    from scal_sdt.hypernetwork.format import save_hypernetwork
    from scal_sdt.hypernetwork.module import create_hypernetwork
    from scal_sdt.hypernetwork.trainer import context_widths
    from scal_sdt.lora_layers.network import LoraNetwork, unet_targets
    from scal_sdt.textual_inversion.config import EmbeddingConfig
    from scal_sdt.textual_inversion.format import Embedding, save_embedding
    from scal_sdt.textual_inversion.trainer import train_embedding
    from recording import RecordingReporter

    root = tmp_path_factory.mktemp("models")
    host = tiny_hosts("tiny-sd1")
    data = root / "data"
    make_concept_folder(data, count=2)
    cfg = EmbeddingConfig(model="tiny-sd1", data=str(data), name="zq", steps=3, lr="0.5",
                          out=str(root / "embeddings"), log_dir=str(root / "run"), save_every=0, preview_every=0,
                          template="subject", resolution=32)
    train_embedding(cfg, host, RecordingReporter())
    save_embedding(Embedding("wide", {"*": torch.randn(1, 1024)}), root / "embeddings" / "wide.safetensors")
    Image.new("RGB", (8, 8)).save(root / "embeddings" / "photo.png")
    hn = create_hypernetwork("look", context_widths(host.kv_projections()), "1, 2, 1", "relu", seed=1)
    for module in (m for pair in hn.layers.values() for m in pair):
        for p in module.parameters():
            torch.nn.init.normal_(p, std=0.5)
    (root / "hypernetworks").mkdir()
    save_hypernetwork(hn, root / "hypernetworks" / "look.pt")
    torch.manual_seed(0)
    net = LoraNetwork(unet_targets(host.unet_modules(), "attn2-kv"), rank=2)
    for layer in net.layers:
        torch.nn.init.normal_(layer.up.weight, std=1.0)
    (root / "Lora").mkdir()
    net.save(root / "Lora" / "ink.safetensors", "sd1", "ink", extra={"ss_steps": "120"})
    (root / "Stable-diffusion").mkdir()
    u = "model.diffusion_model."
    save_file({u + "input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3), "cond_stage_model.model.ln_final.weight":
               torch.zeros(4), "first_stage_model.x": torch.zeros(1)}, str(root / "Stable-diffusion" / "sd2.safetensors"))
    return root, host


def test_every_kind_with_its_fit_and_reason(shelf):
    root, host = shelf
    items = {i.name: i for i in scan([root / d for d in ("embeddings", "hypernetworks", "Lora", "Stable-diffusion")],
                                     host)}
    assert set(items) == {"zq", "wide", "look", "ink", "sd2"}  # the plain picture is not listed
    assert items["zq"].kind == "embedding" and items["zq"].fit is True
    assert items["wide"].fit is False and "width 1024 (sd2)" in items["wide"].why
    assert items["look"].kind == "hypernetwork" and items["look"].fit is True
    assert items["ink"].kind == "lora" and items["ink"].fit is True
    assert items["ink"].info["metadata"]["ss_steps"] == "120"
    assert items["sd2"].fit is None and "a whole sd2 model" in items["sd2"].why
    listed = list(items.values())
    assert [i.name for i in select(listed, kind="lora")] == ["ink"]
    assert {i.name for i in select(listed, fits_only=True)} == {"zq", "look", "ink"}
    assert [i.name for i in select(listed, search="hypernetwork relu")] == ["look"]


def test_ab_previews_differ_and_come_from_the_cache(shelf, cache, monkeypatch):
    root, host = shelf
    items = {i.name: i for i in scan([root / "embeddings", root / "hypernetworks", root / "Lora"], host)}
    got, rendered = previews(items["zq"], host, SETTINGS, cache)
    assert set(got) == {"without", "with"} and rendered == 2
    a, b = (np.asarray(Image.open(got[k]), dtype=float) for k in ("without", "with"))
    assert a.shape == (32, 32, 3) and np.abs(a - b).mean() > 1.0  # the trained embedding changes the picture

    lora, rendered = previews(items["ink"], host, SETTINGS, cache)
    assert list(lora) == ["without", "with 0.5", "with 1"] and rendered == 2  # "without" is shared
    assert lora["without"] == got["without"]
    half, full = (np.asarray(Image.open(lora[k]), dtype=float) for k in ("with 0.5", "with 1"))
    assert np.abs(full - a).mean() > 1.0 and np.abs(half - a).mean() > 1.0 and np.abs(full - half).mean() > 1.0
    hn, _ = previews(items["look"], host, SETTINGS, cache)
    assert np.abs(np.asarray(Image.open(hn["with 1"]), dtype=float) - a).mean() > 0

    calls = []
    monkeypatch.setattr(host, "sample", lambda *a, **k: calls.append(1))
    again, rendered = previews(items["zq"], host, SETTINGS, cache)
    assert again == got and rendered == 0 and not calls
    with pytest.raises(ValueError, match="does not fit"):
        previews(items["wide"], host, SETTINGS, cache)


def test_cli_lists_filters_and_reads_the_cache(shelf, cache, capsys):
    root, _ = shelf
    assert main(["library", str(root / "embeddings"), str(root / "Lora"), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {r["name"]: r["fit"] for r in rows} == {"zq": None, "wide": None, "ink": None}  # no model: no fit
    args = ["library", str(root / "embeddings"), "--model", "tiny-sd1", "--device", "cpu", "--kind", "embedding",
            "--fits-only", "--previews", "--steps", "2", "--size", "32", "--seed", "3", "--cache", str(cache)]
    previews(next(i for i in scan([root / "embeddings"], shelf[1]) if i.name == "zq"), shelf[1], SETTINGS, cache)
    assert main(args) == 0  # the same settings and model: the images already rendered
    out = capsys.readouterr()
    assert "zq — " in out.out and "wide" not in out.out and "with: " in out.out and "zq: from the cache" in out.err
    assert main(["library", str(root / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_the_tabs_view_lists_renders_and_uses(shelf, cache):
    from scal_sdt.library.config import LibraryConfig
    from scal_sdt.ui.library_tab import LibraryView, add_to_prompt, prompt_token, use_on_page

    root, host = shelf
    view = LibraryView(lambda: [str(root / "embeddings"), str(root / "Lora")], lambda: host)
    cfg = LibraryConfig(folders=view.folders(), search="zq", steps=2, size=32, seed=3, cache=str(cache))
    rows = view.refresh(cfg)
    assert [r[:4] for r in rows] == [["zq", "embedding", "unknown", "fits"]]  # a tiny model's width: no family
    file = rows[0][5]
    assert "fits the loaded model" in view.details_html(file)
    view.render(file, cfg)  # from the cache when the test above ran
    images, note = view.render(file, cfg)
    assert [label for _, label in images] == ["without", "with"] and "all from the cache" in note
    assert use_on_page(view.item(file), "a cat", "", "")[0] == "a cat, zq"
    view.refresh(LibraryConfig(folders=view.folders(), kind="lora"))
    ink = next(iter(view.items.values()))
    assert use_on_page(ink, "a cat", "", "")[2] == str(root / "Lora" / "ink.safetensors")
    assert prompt_token(ink) == "<lora:ink:1>" and add_to_prompt("a cat, <lora:ink:1>", "<lora:ink:1>") == \
        "a cat, <lora:ink:1>"
    with pytest.raises(ValueError, match="pick an item"):
        view.render("elsewhere.pt", cfg)


def test_the_page_has_a_library_tab():
    pytest.importorskip("gradio")
    from scal_sdt.ui.standalone import build_app
    from scal_sdt.ui_config import UiConfig

    app = build_app(UiConfig(model="tiny-sd1"))
    ids = {getattr(b, "elem_id", None) for b in app.blocks.values()}
    assert {"scal_sdt_lib_folders", "scal_sdt_lib_table", "scal_sdt_lib_render", "scal_sdt_lib_use",
            "scal_sdt_lib_search", "scal_sdt_lib_kind", "scal_sdt_lib_gallery"} <= ids


@pytest.fixture(scope="module")
def more(tmp_path_factory, tiny_hosts):
    """A checkpoint of the same family with other weights, and an aesthetic embedding for tiny-sd1's text encoder
    (a random CLIP image-space row and its text projection, as ours are stored)."""
    from scal_sdt.files import save_safetensors
    from scal_sdt.host.checkpoint import save_checkpoint
    from scal_sdt.host.standalone import load_components

    root = tmp_path_factory.mktemp("more")
    host = tiny_hosts("tiny-sd1")
    other = load_components("tiny-sd1")
    torch.manual_seed(1)
    with torch.no_grad():
        for p in other.unet.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    save_checkpoint(other, root / "other.safetensors")
    width = host.components.text_encoders[0].config.hidden_size
    g = torch.Generator().manual_seed(0)
    row = torch.randn(1, 24, generator=g)
    save_safetensors({"clip_l": row / row.norm(), "clip_l.text_projection": torch.randn(width, 24, generator=g)},
                     root / "look.safetensors", metadata={"trainer": "scal-sdt aesthetic embedding"})
    return root, host


def test_checkpoint_and_aesthetic_previews_differ_and_come_from_the_cache(more, cache, monkeypatch):
    from scal_sdt.library.previews import standalone_checkpoint

    root, host = more
    items = {i.name: i for i in scan([root], host)}
    assert items["other"].kind == "checkpoint" and items["look"].kind == "aesthetic-embedding"
    with pytest.raises(ValueError, match="ask for checkpoint previews"):
        previews(items["other"], host, SETTINGS, cache)
    opened = []

    def opener(path):
        opened.append(path)
        return standalone_checkpoint(path, "cpu")

    got, rendered = previews(items["other"], host, SETTINGS, cache, opener)
    assert list(got) == ["loaded model", "this checkpoint"] and opened == [root / "other.safetensors"]
    loaded, other = (np.asarray(Image.open(got[k]), dtype=float) for k in got)
    assert loaded.shape == other.shape == (32, 32, 3) and np.abs(loaded - other).mean() > 1.0

    settings = PreviewSettings(prompt="a picture", seed=3, steps=2, size=32, aesthetic_weight=0.5, aesthetic_steps=10,
                               aesthetic_lr=1e-3)
    ae, rendered = previews(items["look"], host, settings, cache)
    assert list(ae) == ["without", "with weight 0.5"] and ae["without"] == got["loaded model"]  # the same plain one
    assert rendered == 1  # the plain picture came from the cache: other settings only key the aesthetic one
    plain, tuned = (np.asarray(Image.open(ae[k]), dtype=float) for k in ae)
    assert np.abs(plain - tuned).mean() > 0.5  # the aesthetic weight changes the picture

    monkeypatch.setattr(host, "sample", lambda *a, **k: pytest.fail("sampled again"))
    assert previews(items["other"], host, SETTINGS, cache, opener) == (got, 0) and len(opened) == 1
    assert previews(items["look"], host, settings, cache) == (ae, 0)


def test_the_tab_asks_before_loading_a_checkpoint(more, cache):
    from scal_sdt.library.config import LibraryConfig
    from scal_sdt.ui.library_tab import LibraryView

    root, host = more
    view = LibraryView(lambda: [str(root)], lambda: host)
    cfg = LibraryConfig(folders=view.folders(), kind="checkpoint", steps=2, size=32, seed=3, cache=str(cache))
    view.refresh(cfg)
    assert view.choices() == ["other (checkpoint)"]
    with pytest.raises(ValueError, match="tick 'checkpoint previews'"):
        view.render("other (checkpoint)", cfg)
    images, note = view.render("other (checkpoint)", dataclasses.replace(cfg, checkpoint_previews=True))
    assert [label for _, label in images] == ["loaded model", "this checkpoint"]

"""The library on tiny-sd1: every kind listed with its fit (a mismatch with the reason), search and filter, and the
A/B previews of a trained embedding, a hypernetwork and a LoRA: different from the plain image, and read back from
the cache the second time."""
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


def test_ab_previews_differ_and_come_from_the_cache(shelf, tmp_path, monkeypatch):
    root, host = shelf
    items = {i.name: i for i in scan([root / "embeddings", root / "hypernetworks", root / "Lora"], host)}
    cache = tmp_path / "cache"
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


def test_cli_lists_filters_and_renders(shelf, tmp_path, capsys):
    root, _ = shelf
    assert main(["library", str(root / "embeddings"), str(root / "Lora"), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {r["name"]: r["fit"] for r in rows} == {"zq": None, "wide": None, "ink": None}  # no model: no fit
    args = ["library", str(root / "embeddings"), "--model", "tiny-sd1", "--device", "cpu", "--kind", "embedding",
            "--fits-only", "--previews", "--steps", "2", "--size", "32", "--cache", str(tmp_path / "c")]
    assert main(args) == 0
    out = capsys.readouterr()
    assert "zq — " in out.out and "wide" not in out.out and "with: " in out.out and "zq: rendered" in out.err
    assert main(args) == 0
    assert "zq: from the cache" in capsys.readouterr().err
    assert main(["library", str(root / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err

"""Hypernetworks: the WebUI's module layout and file, applying with a strength, training, the LR range test."""
from __future__ import annotations

import pytest
import torch

from scal_sdt import cli
from scal_sdt.host.attention import context_widths
from scal_sdt.hypernetwork.apply import apply_hypernetwork, hooks_for, remove_hypernetwork
from scal_sdt.hypernetwork.config import HypernetworkConfig
from scal_sdt.hypernetwork.format import file_sha10, load_hypernetwork, load_optimizer_state, save_hypernetwork
from scal_sdt.hypernetwork.module import create_hypernetwork
from scal_sdt.hypernetwork.trainer import find_learning_rate, train_hypernetwork
from scal_sdt.toy_world.concepts import make_unnamed_style_set
from scal_sdt.toy_world.world import make_dataset
from scal_sdt.training.report import Reporter
from scal_sdt.training.validation import heldout_loss

from text_aware import latents_of
from webui_rules import check_pt


@pytest.mark.parametrize("options, keys", [
    # the WebUI's Sequential: Linear, [activation], [LayerNorm], [Dropout] per layer, in that order
    (dict(structure="1, 2, 1"), ["linear.0", "linear.1"]),
    (dict(structure="1, 2, 1", activation="relu"), ["linear.0", "linear.2"]),
    (dict(structure="1, 2, 1", activation="relu", activate_output=True), ["linear.0", "linear.2"]),
    (dict(structure="1, 2, 1", activation="relu", layer_norm=True), ["linear.0", "linear.2", "linear.3", "linear.4"]),
    (dict(structure="1, 1.5, 2, 1", activation="swish", layer_norm=True, use_dropout=True),
     ["linear.0", "linear.2", "linear.4", "linear.6", "linear.7", "linear.8"]),
    (dict(structure="1, 2, 2, 1", activation="gelu", use_dropout=True, last_layer_dropout=True),
     ["linear.0", "linear.3", "linear.6"]),
])
def test_module_layout_is_the_webuis(options, keys):
    hn = create_hypernetwork("x", [16], **options, seed=0)
    k, v = hn.layers[16]
    names = sorted({n.rsplit(".", 1)[0] for n in k.state_dict()})
    assert names == sorted(keys)
    assert list(k.state_dict()) == list(v.state_dict())


def test_bad_options_are_refused_clearly():
    for bad in ("2, 2, 1", "1, 2", "1,,x"):
        with pytest.raises(ValueError, match="layer structure"):
            create_hypernetwork("x", [8], structure=bad)
    with pytest.raises(ValueError, match="unknown activation"):
        create_hypernetwork("x", [8], activation="wobbly")
    with pytest.raises(ValueError, match="dropout structure"):
        create_hypernetwork("x", [8], structure="1, 2, 1", dropout="0.3, 0, 0")
    with pytest.raises(ValueError, match="name"):
        HypernetworkConfig(name="a/b")


def test_file_round_trips_bit_exact_in_a_form_the_webui_accepts(tmp_path):
    hn = create_hypernetwork("style", [64, 32], structure="1, 2, 1", activation="relu", layer_norm=True,
                             use_dropout=True, last_layer_dropout=True, seed=3)
    hn.train(True)
    opt = torch.optim.AdamW(hn.parameters(), lr=1e-3)
    sum(p.sum() for p in hn.parameters()).backward()
    opt.step()
    path = save_hypernetwork(hn, tmp_path / "style.pt", {"optimizer_name": "AdamW",
                                                         "optimizer_state_dict": opt.state_dict()})
    check_pt(path)  # the WebUI's safe.py would load it
    check_pt(tmp_path / "style.pt.optim")
    raw = torch.load(path, weights_only=True)
    assert sorted(k for k in raw if isinstance(k, int)) == [32, 64]
    assert raw["layer_structure"] == [1, 2, 1] and raw["activation_func"] == "relu" and raw["is_layer_norm"] is True
    assert raw["dropout_structure"] == [0.0, 0.3, 0.0] and raw["last_layer_dropout"] is True
    back = load_hypernetwork(path)
    for width in (32, 64):
        for a, b in zip(hn.layers[width], back.layers[width]):
            for (ka, ta), (kb, tb) in zip(a.state_dict().items(), b.state_dict().items()):
                assert ka == kb and torch.equal(ta, tb)
    assert load_optimizer_state(path)["hash"] == file_sha10(path)
    path.write_bytes(path.read_bytes() + b"x")  # a changed file: its optimizer state no longer applies
    assert load_optimizer_state(path) is None


def test_old_key_names_and_missing_metadata_load(tmp_path):
    """A hypernetwork from the WebUI's earliest days: linear1/linear2 keys, no structure (1, 2, 1 is meant)."""
    def pair(dim):
        return {"linear1.weight": torch.randn(2 * dim, dim), "linear1.bias": torch.zeros(2 * dim),
                "linear2.weight": torch.randn(dim, 2 * dim), "linear2.bias": torch.zeros(dim)}
    torch.save({8: (pair(8), pair(8)), "step": 5}, tmp_path / "old.pt")
    hn = load_hypernetwork(tmp_path / "old.pt")
    assert hn.structure == [1, 2, 1] and hn.step == 5 and hn.widths == [8] and hn.name == "old"
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="cannot read hypernetwork"):
        load_hypernetwork(tmp_path / "junk.pt")


def _unet_out(host, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, host.native_resolution // 8, host.native_resolution // 8, generator=gen)
    t = torch.tensor([300, 700])
    with torch.no_grad():
        cond = host.encode_prompts(["a red star on a white background", "a blue circle"], size=(64, 64))
        return host.predict(x, t, cond)


@pytest.mark.parametrize("family", ["tiny-sd1", "tiny-sdxl"])  # SDXL: through our hook, which the WebUI lacks
def test_strength_zero_is_the_unpatched_model_and_removal_restores_it(tiny_hosts, family):
    host = tiny_hosts(family)
    base = _unet_out(host)
    widths = context_widths(host.kv_projections())
    hn = create_hypernetwork("hn", widths, structure="1, 2, 1", activation="relu", weight_init="XavierNormal", seed=1)
    apply_hypernetwork(host, hn, 0.0)
    assert torch.equal(_unet_out(host), base)
    apply_hypernetwork(host, hn, 1.0)
    once = _unet_out(host)
    assert not torch.allclose(once, base, atol=1e-4)
    apply_hypernetwork(host, hn, 1.0)  # the same one again: still applied once
    assert len(hooks_for(host).active) == 1 and torch.equal(_unet_out(host), once)
    apply_hypernetwork(host, hn, 0.5)
    half = _unet_out(host)
    assert (half - base).abs().mean() < (once - base).abs().mean()
    remove_hypernetwork(host, "hn")
    assert torch.equal(_unet_out(host), base)
    assert not any(k._forward_pre_hooks for k, _ in host.kv_projections())


def test_trained_hypernetwork_lowers_held_out_loss_on_its_style(tmp_path):
    from scal_sdt.host.standalone import load_host

    host = load_host("toy", device="cpu")
    make_unnamed_style_set(tmp_path / "train", 24, seed=1)
    make_unnamed_style_set(tmp_path / "held", 8, seed=2)
    held = latents_of(host, tmp_path / "held")
    prompts = [(tmp_path / "held" / f"{i:05d}.txt").read_text() for i in range(8)]
    cfg = HypernetworkConfig(model="toy", data=str(tmp_path / "train"), name="checks", lr="1e-3", steps=150,
                             batch_size=4, template="filewords", out=str(tmp_path / "hn"),
                             log_dir=str(tmp_path / "run"), save_every=0, preview_every=0, device="cpu")
    before = heldout_loss(host, held, prompts)
    result = train_hypernetwork(cfg, host, Reporter())
    assert not hooks_for(host).active  # training leaves the model unpatched
    apply_hypernetwork(host, result.final_path, 1.0)
    after = heldout_loss(host, held, prompts)
    remove_hypernetwork(host)
    assert after < 0.95 * before, (before, after)  # measured 0.214 -> 0.193 (0.90x)
    assert load_optimizer_state(result.final_path) is not None  # .pt.optim beside it, for the WebUI to continue


def test_find_lr_proposes_a_rate_and_trains_nothing(tmp_path, tiny_hosts):
    host = tiny_hosts("tiny-sd1")
    make_dataset(tmp_path / "d", 8, seed=0)
    cfg = HypernetworkConfig(model="tiny-sd1", data=str(tmp_path / "d"), name="probe", batch_size=2,
                             log_dir=str(tmp_path / "run"), out=str(tmp_path / "hn"), device="cpu", find_lr=True)
    base = _unet_out(host)
    result = find_learning_rate(cfg, host, Reporter(), steps=25)
    assert result.lrs[0] <= result.proposal <= result.lrs[-1]
    assert (tmp_path / "run" / "find_lr.csv").exists() and (tmp_path / "run" / "find_lr.png").exists()
    assert not (tmp_path / "hn" / "probe.pt").exists()
    assert torch.equal(_unet_out(host), base)


def test_cli_trains_and_writes_the_webui_file(tmp_path):
    make_dataset(tmp_path / "d", 6, seed=0)
    code = cli.main(["train-hypernetwork", "--model", "tiny-sd1", "--data", str(tmp_path / "d"), "--name", "clihn",
                     "--layer-structure", "1,2,1", "--activation", "relu", "--layer-norm", "--steps", "3",
                     "--lr", "1e-4", "--out", str(tmp_path / "hn"), "--log-dir", str(tmp_path / "run"),
                     "--preview-every", "0", "--save-every", "0", "--device", "cpu"])
    assert code == 0
    hn = load_hypernetwork(tmp_path / "hn" / "clihn.pt")
    assert hn.step == 3 and hn.activation == "relu" and hn.layer_norm and hn.widths == [32, 64]
    assert cli.main(["train-hypernetwork", "--name", "x", "--layer-structure", "2,1", "--data", "demo"]) == 2


def test_resume_continues_an_existing_file_with_its_optimizer_state(tmp_path):
    """The WebUI's flow: train a hypernetwork file further; its step count goes on and .pt.optim is restored."""
    make_dataset(tmp_path / "d", 6, seed=0)
    common = ["train-hypernetwork", "--model", "tiny-sd1", "--data", str(tmp_path / "d"), "--name", "more",
              "--lr", "1e-4", "--out", str(tmp_path / "hn"), "--preview-every", "0", "--save-every", "0",
              "--device", "cpu"]
    assert cli.main([*common, "--steps", "3", "--log-dir", str(tmp_path / "run1")]) == 0
    first = load_hypernetwork(tmp_path / "hn" / "more.pt")
    assert cli.main([*common, "--steps", "2", "--log-dir", str(tmp_path / "run2")]) == 2  # exists: refused
    assert cli.main([*common, "--steps", "2", "--log-dir", str(tmp_path / "run2"), "--resume"]) == 0
    more = load_hypernetwork(tmp_path / "hn" / "more.pt")
    assert more.step == 5
    assert not torch.equal(first.parameters()[0], more.parameters()[0])
    optim = load_optimizer_state(tmp_path / "hn" / "more.pt")["optimizer_state_dict"]
    assert int(optim["state"][0]["step"]) == 5  # AdamW's own count went on from the file's


def test_gradient_checkpointing_trains_the_same_hypernetwork(tmp_path):
    """Issue 22: with gradient checkpointing the backward pass runs the UNet's blocks again, and the hypernetwork's
    hooks must still be on then (they came off after each forward: torch's checkpoint failed, "a different number of
    tensors was saved"). The WebUI's trainers always checkpoint, so ours do there by default. Same run with and
    without: the same weights (float noise apart)."""
    make_dataset(tmp_path / "d", 4, seed=0)
    weights = []
    for checkpointing in (False, True):
        name = f"ck{int(checkpointing)}"
        assert cli.main(["train-hypernetwork", "--model", "tiny-sd1", "--data", str(tmp_path / "d"), "--name", name,
                         "--steps", "2", "--lr", "1e-3", "--batch-size", "2", "--out", str(tmp_path / "hn"),
                         "--log-dir", str(tmp_path / name), "--preview-every", "1", "--preview-steps", "2",
                         "--save-every", "0", "--device", "cpu", "--seed", "3"]
                        + (["--gradient-checkpointing"] if checkpointing else [])) == 0
        weights.append(load_hypernetwork(tmp_path / "hn" / f"{name}.pt").parameters())
    for plain, checkpointed in zip(*weights):
        assert (plain - checkpointed).abs().max() < 1e-5
    assert not any(torch.equal(p, torch.zeros_like(p)) for p in weights[1][1::2])  # trained: the biases moved

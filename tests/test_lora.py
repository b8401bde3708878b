"""LoRA training: every network type round-trips through our loader and gives the weight change the WebUI's Lora
extension computes from the same keys; a trained file changes the UNet at strength 1 and nothing at 0; the model's
weights are bit-identical after training; resume is exact; bad input is refused by name with nothing written."""
from __future__ import annotations

import hashlib
import json

import pytest
import torch
from safetensors import safe_open

from recording import RecordingReporter as Collect
from scal_sdt.lora.adapters import NETWORKS, AdapterSet, load_lora, make_adapter
from scal_sdt.lora.config import LoraConfig
from scal_sdt.lora.trainer import build_adapters, train_lora


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from scal_sdt.toy_world.concepts import make_held_out_colour_set

    root = tmp_path_factory.mktemp("lora")
    make_held_out_colour_set(root / "inst", 4, seed=1)
    return root


def config(root, tmp_path, **kw):
    base = dict(model="tiny-sd1", name="lt", instance_data=str(root / "inst"), instance_prompt="[filewords]", steps=2,
                resolution=32, rank=4, alpha=4, lr="1e-2", out=str(tmp_path / "out"), log_dir=str(tmp_path / "run"),
                embeddings_out=str(tmp_path / "emb"), preview_every=0, save_every=0, device="cpu")
    base.update(kw)
    return LoraConfig(**base)


def weights_digest(host) -> str:
    h = hashlib.sha256()
    for m in host.trainable_modules(text=True):
        for k, v in sorted(m.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def predict(host, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 4, 4, 4, generator=g)
    with torch.no_grad():
        return host.predict(x, torch.tensor([500]), host.encode_prompts(["a pink square"], size=(32, 32)))


# -- the WebUI's arithmetic, written from its formulas (extensions-builtin/Lora/network_*.py) ---------------------
def webui_delta(sd: dict, key: str, weight: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
    """The weight change the WebUI's built-in Lora extension makes of ``key``'s tensors at ``strength``: the
    rebuilt change, DoRA's decomposition, then alpha / dim and the strength."""
    def flat(t):
        return t.reshape(t.shape[0], -1)

    alpha = sd.get(f"{key}.alpha")
    if f"{key}.lora_up.weight" in sd:
        up, down = sd[f"{key}.lora_up.weight"], sd[f"{key}.lora_down.weight"]
        updown = (flat(up) @ flat(down)).reshape(weight.shape)
        dim = down.shape[0]
    elif f"{key}.hada_w1_a" in sd:
        w1 = flat(sd[f"{key}.hada_w1_a"]) @ flat(sd[f"{key}.hada_w1_b"])
        w2 = flat(sd[f"{key}.hada_w2_a"]) @ flat(sd[f"{key}.hada_w2_b"])
        updown = (w1 * w2).reshape(weight.shape)
        dim = sd[f"{key}.hada_w1_b"].shape[0]
    else:
        dim = None
        if f"{key}.lokr_w1" in sd:
            w1 = sd[f"{key}.lokr_w1"]
        else:
            w1, dim = sd[f"{key}.lokr_w1_a"] @ sd[f"{key}.lokr_w1_b"], sd[f"{key}.lokr_w1_b"].shape[0]
        if f"{key}.lokr_w2" in sd:
            w2 = sd[f"{key}.lokr_w2"]
        else:
            w2, dim = sd[f"{key}.lokr_w2_a"] @ sd[f"{key}.lokr_w2_b"], sd[f"{key}.lokr_w2_b"].shape[0]
        if weight.dim() == 4:
            w2 = w2.reshape(w2.shape[0], -1, *weight.shape[2:]) if w2.dim() == 2 else w2
            w1 = w1[:, :, None, None]
        updown = torch.kron(w1, w2).reshape(weight.shape)
    scale = float(alpha) / dim if (alpha is not None and dim) else 1.0
    if f"{key}.dora_scale" in sd:  # per input column, as the WebUI's apply_weight_decompose, before the scale
        merged = weight + updown
        norm = merged.transpose(0, 1).reshape(merged.shape[1], -1).norm(dim=1, keepdim=True)
        norm = norm.reshape(merged.shape[1], *[1] * (weight.dim() - 1)).transpose(0, 1)
        updown = merged * (sd[f"{key}.dora_scale"] / norm) - weight
    return updown * scale * strength


@pytest.mark.parametrize("network", NETWORKS)
def test_every_type_round_trips_in_the_webuis_layout(network, tiny_hosts, folders, tmp_path):
    host = tiny_hosts("tiny-sd1")
    cfg = config(folders, tmp_path, network=network, rank=4, alpha=2, conv_rank=2, conv_alpha=1)
    net, _, _ = build_adapters(cfg, host)
    with torch.no_grad():  # a trained-looking state: every parameter non-zero
        g = torch.Generator().manual_seed(1)
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    assert any(k.endswith(("in_layers_2", "out_layers_3")) for k in net.keys) == (network != "lora")
    tensors = net.file_tensors()
    from scal_sdt.files import save_safetensors

    path = save_safetensors(tensors, tmp_path / "x.safetensors", metadata={"ss_base_model_version": "sd_v1"})
    plain = predict(host)
    net.attach(1.0)
    ours = predict(host)
    net.detach()
    assert torch.equal(predict(host), plain)
    loaded = load_lora(path, host.lora_targets(), family="sd1")
    assert sorted(loaded.keys) == sorted(net.keys)
    loaded.attach(1.0)
    again = predict(host)
    loaded.detach()
    assert not torch.allclose(ours, plain, atol=1e-4) and torch.allclose(again, ours, atol=1e-5)
    targets = host.lora_targets()
    with safe_open(str(path), "pt") as f:
        sd = {k: f.get_tensor(k) for k in f.keys()}
    for i, key in enumerate(loaded.keys):  # the WebUI's weight change equals ours, layer by layer, at 1 and 0.5
        w = targets[key].weight.detach().float()
        for strength in (1.0, 0.5):
            assert torch.allclose(webui_delta(sd, key, w, strength), loaded.weight_delta(i, strength), atol=1e-5,
                                  rtol=1e-4), (key, strength)
    loaded.attach(0.0)  # strength 0: the plain model's output, bit for bit
    assert torch.equal(predict(host), plain)
    loaded.detach()


def test_training_changes_the_unet_at_1_not_at_0_and_leaves_the_model_untouched(tiny_hosts, folders, tmp_path):
    host = tiny_hosts("tiny-sd1")
    digest = weights_digest(host)
    plain = predict(host)
    cfg = config(folders, tmp_path, network="locon", train_text_encoder=True, pivotal_vectors=1,
                 pivotal_init_text="red", training_comment="pink shapes")
    result = train_lora(cfg, host, Collect())
    assert weights_digest(host) == digest and torch.equal(predict(host), plain)  # bit-identical, detached
    path = result.final_path
    assert path == tmp_path / "out" / "lt.safetensors" and not list(path.parent.glob("*.tmp*"))
    with safe_open(str(path), "pt") as f:
        keys, meta = set(f.keys()), f.metadata()
    assert any(k.startswith("lora_te_text_model_encoder_layers_") for k in keys)
    assert any(k.startswith("lora_unet_") and k.endswith(".lora_up.weight") for k in keys)
    assert "bundle_emb.lt.clip_l" in keys or "bundle_emb.lt.string_to_param.*" in keys
    assert meta["ss_network_module"] == "networks.lora" and meta["ss_network_dim"] == "4"
    assert meta["ss_network_alpha"] == "4" and meta["ss_base_model_version"] == "sd_v1"
    assert meta["ss_output_name"] == "lt" and meta["ss_steps"] == "2" and meta["ss_training_comment"] == "pink shapes"
    assert meta["ss_sd_model_hash"] and meta["ss_new_sd_model_hash"] == host.model_hash
    tags = json.loads(meta["ss_tag_frequency"])["inst"]
    assert sum(tags.values()) >= 4 and json.loads(meta["ss_network_args"])["conv_dim"] == "4"
    lora = load_lora(path, host.lora_targets(), family="sd1")
    lora.attach(1.0)
    one = predict(host)
    lora.set_multiplier(0.0)
    zero = predict(host)
    lora.detach()
    assert not torch.allclose(one, plain, atol=1e-5) and torch.equal(zero, plain)


def test_resume_is_exact(tiny_hosts, folders, tmp_path):
    host = tiny_hosts("tiny-sd1")
    whole = train_lora(config(folders, tmp_path / "a", steps=4, rank_dropout=0.2, save_every=2), host, Collect())
    cfg = config(folders, tmp_path / "b", steps=2, rank_dropout=0.2)
    train_lora(cfg, host, Collect())
    import dataclasses

    resumed = train_lora(dataclasses.replace(cfg, steps=4, resume=True), host, Collect())
    assert resumed.losses == whole.losses[2:]
    with safe_open(str(whole.final_path), "pt") as a, safe_open(str(resumed.final_path), "pt") as b:
        assert set(a.keys()) == set(b.keys())
        assert all(torch.equal(a.get_tensor(k), b.get_tensor(k)) for k in a.keys())


def test_bad_input_is_refused_by_name_with_nothing_written(tiny_hosts, folders, tmp_path):
    host = tiny_hosts("tiny-sd1")
    with pytest.raises(ValueError, match="rank 512 is larger than layer lora_unet_"):
        train_lora(config(folders, tmp_path, rank=512), host, Collect())
    with pytest.raises(ValueError, match="lora, locon, loha, lokr, dora"):
        config(folders, tmp_path, network="lycoris")
    with pytest.raises(ValueError, match="alpha must be > 0"):
        config(folders, tmp_path, alpha=0)
    with pytest.raises(ValueError, match="block_dims: this UNet has"):
        train_lora(config(folders, tmp_path, block_dims="4,4"), host, Collect())
    assert not (tmp_path / "out").exists() and not (tmp_path / "run").exists()
    # a LoRA of another family: refused by name by the loader (generate and merge use it)
    sd2 = tiny_hosts("tiny-sd2")
    net, _, _ = build_adapters(config(folders, tmp_path), sd2)
    from scal_sdt.files import save_safetensors

    path = save_safetensors(net.file_tensors(), tmp_path / "sd2.safetensors",
                            metadata={"ss_base_model_version": "sd_v2"})
    with pytest.raises(ValueError, match="sd2.safetensors is a LoRA for sd2; this model is sd1"):
        load_lora(path, host.lora_targets(), family="sd1")
    bare = save_safetensors(net.file_tensors(), tmp_path / "bare.safetensors")  # no metadata: the keys tell
    with pytest.raises(ValueError, match="bare.safetensors"):
        load_lora(bare, host.lora_targets(), family="sd1")


def test_block_dims_and_lrs_shape_the_network(tiny_hosts, folders, tmp_path):
    host = tiny_hosts("tiny-sd1")
    from scal_sdt.lora.targets import unet_blocks

    blocks = unet_blocks(host.unet_modules())
    dims = ["0"] * len(blocks)
    dims[blocks.index("MID")] = "2"
    lrs = ["1"] * len(blocks)
    lrs[blocks.index("MID")] = "0.5"
    net, block_lr, _ = build_adapters(config(folders, tmp_path, block_dims=",".join(dims), block_lrs=",".join(lrs)),
                                      host)
    assert net.keys and all(k.startswith("lora_unet_middle_block_") for k in net.keys)
    assert {a.lora_down.weight.shape[0] for a in net.adapters} == {2} and set(block_lr.values()) == {0.5}


def test_adapter_alone_refuses_a_rank_larger_than_its_layer():
    layer = torch.nn.Linear(8, 6)
    with pytest.raises(ValueError, match=r"rank 7 is larger than layer k \(\(6, 8\)\): at most 6"):
        make_adapter("lora", "k", layer, 7, 1.0)
    a = AdapterSet({"k": make_adapter("lora", "k", layer, 6, 1.0)})
    assert len(a) == 1

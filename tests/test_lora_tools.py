"""`scal-sdt lora merge | resize | extract`: merging equals applying at run time (within fp tolerance), several LoRAs
merge into one, resizing to the full rank is exact and lower ranks report the energy kept, a LoRA extracted between
two checkpoints reproduces their difference, and a LoRA of another family is refused."""
from __future__ import annotations

import pytest
import torch

from scal_sdt.files import save_safetensors
from scal_sdt.host.checkpoint import save_checkpoint
from scal_sdt.host.standalone import load_components, load_host
from scal_sdt.lora.adapters import load_lora
from scal_sdt.lora.config import LoraConfig
from scal_sdt.lora.tools import LoraToolConfig, extract, merge, resize
from scal_sdt.lora.trainer import build_adapters


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return save_checkpoint(load_components("tiny-sd1"), tmp_path_factory.mktemp("ckpt") / "base.safetensors")


def random_lora(host, path, network="lora", seed=1, family="sd_v1", rank=4):
    cfg = LoraConfig(name="x", instance_data="x", network=network, rank=rank, alpha=rank / 2, seed=seed)
    net, _, _ = build_adapters(cfg, host)
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed)
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return save_safetensors(net.file_tensors(), path, metadata={"ss_base_model_version": family})


def predict(host):
    x = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return host.predict(x, torch.tensor([500]), host.encode_prompts(["a pink square"], size=(32, 32)))


def applied(host, *loras):
    nets = [load_lora(p, host.lora_targets(), "sd1").attach(w) for p, w in loras]
    try:
        return predict(host)
    finally:
        for n in reversed(nets):
            n.detach()


@pytest.mark.parametrize("network", ["locon", "loha", "dora"])
def test_merge_into_a_checkpoint_equals_applying_at_run_time(network, base, tmp_path):
    host = load_host(str(base), device="cpu")
    lora = random_lora(host, tmp_path / "l.safetensors", network)
    want = applied(host, (lora, 0.7))
    out = merge(LoraToolConfig(action="merge", loras=f"{lora}:0.7", model=str(base),
                               out=str(tmp_path / "m.safetensors"), save_fp16=False), report=lambda _: None)
    got = predict(load_host(str(out), device="cpu"))
    assert not torch.allclose(want, predict(host), atol=1e-4)
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4), (got - want).abs().max()


def test_several_loras_merge_into_one_exactly(base, tmp_path):
    host = load_host(str(base), device="cpu")
    a, b = random_lora(host, tmp_path / "a.safetensors", seed=1), random_lora(host, tmp_path / "b.safetensors", seed=2)
    want = applied(host, (a, 0.5), (b, 1.0))
    out = merge(LoraToolConfig(action="merge", loras=f"{a}:0.5,{b}", model=str(base), into_lora=True,
                               out=str(tmp_path / "ab.safetensors")), report=lambda _: None)
    assert torch.allclose(applied(host, (out, 1.0)), want, atol=1e-5)


def test_resize_to_full_rank_is_exact_and_lower_ranks_report_the_kept_energy(base, tmp_path):
    host = load_host(str(base), device="cpu")
    lora = random_lora(host, tmp_path / "l.safetensors", rank=4)
    full, kept = resize(LoraToolConfig(action="resize", loras=str(lora), rank=4, out=str(tmp_path / "r4.safetensors")),
                        report=lambda _: None)
    assert min(kept) > 1 - 1e-6
    a, b = load_lora(full, host.lora_targets()), load_lora(lora, host.lora_targets())
    assert sorted(a.keys) == sorted(b.keys)
    for key in a.keys:  # each layer's change, to fp32 rounding
        da, db = a.weight_delta(a.keys.index(key)), b.weight_delta(b.keys.index(key))
        assert torch.allclose(da, db, atol=1e-7, rtol=1e-5), key
    assert torch.allclose(applied(host, (full, 1.0)), applied(host, (lora, 1.0)), atol=1e-4)
    low, kept = resize(LoraToolConfig(action="resize", loras=str(lora), rank=1, out=str(tmp_path / "r1.safetensors")),
                       report=lambda _: None)
    assert 0 < min(kept) and max(kept) < 1
    assert {t.shape[0] for k, t in load_lora(low, host.lora_targets()).state_dict().items()
            if k.endswith("lora_down.weight")} == {1}


def test_extract_between_two_checkpoints_reproduces_their_difference(base, tmp_path):
    host = load_host(str(base), device="cpu")
    lora = random_lora(host, tmp_path / "l.safetensors", "locon")
    merged = merge(LoraToolConfig(action="merge", loras=str(lora), model=str(base), out=str(tmp_path / "m.safetensors"),
                                  save_fp16=False), report=lambda _: None)
    out = extract(LoraToolConfig(action="extract", model=str(base), tuned=str(merged), rank=4, conv_rank=4,
                                 out=str(tmp_path / "e.safetensors")), report=lambda _: None)
    assert torch.allclose(applied(host, (out, 1.0)), predict(load_host(str(merged), device="cpu")), atol=1e-4)


def test_a_lora_of_another_family_is_refused_by_merge(base, tmp_path):
    lora = random_lora(load_host("tiny-sd2", device="cpu"), tmp_path / "sd2.safetensors", family="sd_v2")
    with pytest.raises(ValueError, match="sd2.safetensors is a LoRA for sd2; this model is sd1"):
        merge(LoraToolConfig(action="merge", loras=str(lora), model=str(base), out=str(tmp_path / "m.safetensors")),
              report=lambda _: None)
    assert not (tmp_path / "m.safetensors").exists()

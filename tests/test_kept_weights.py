"""``Host.weights_kept``: a fine-tune of a host that outlives the run (the WebUI's model, the page's) leaves its
weights exactly as they were. Weights in RAM (a CPU WebUI) are kept in a file, not a second RAM copy."""
import pytest
import torch

from scal_sdt.host.standalone import load_host


def test_weights_in_ram_are_kept_in_a_file_and_put_back_bit_for_bit(tmp_path):
    host = load_host("toy", device="cpu")
    unet, text = host.trainable_modules(True)
    before = {name: {k: v.clone() for k, v in m.state_dict().items()} for name, m in (("unet", unet), ("text", text))}
    with pytest.raises(RuntimeError, match="stopped"):
        with host.weights_kept(True, spill_dir=tmp_path):
            kept = list(tmp_path.glob("scal-sdt-kept-*/*.safetensors"))
            assert len(kept) == 2 and sum(p.stat().st_size for p in kept) > 0
            with torch.no_grad():  # trained in place, in another dtype, then the run fails
                for m in (unet, text):
                    m.to(torch.float64)
                    for p in m.parameters():
                        p.add_(1.0)
                    m.requires_grad_(True)
            raise RuntimeError("stopped")
    for name, m in (("unet", unet), ("text", text)):
        now = m.state_dict()
        assert all(now[k].dtype == v.dtype and torch.equal(now[k], v) for k, v in before[name].items()), name
        assert not any(p.requires_grad for p in m.parameters())
    assert list(tmp_path.iterdir()) == []  # the file is gone


def test_weights_on_an_accelerator_are_kept_as_a_ram_copy_and_put_back(tmp_path, monkeypatch):
    """The other branch (weights on a GPU: a copy in RAM, no file), taken here on the CPU by saying the weights are
    not in RAM: the same put-back, in the same dtype."""
    from scal_sdt.host import base

    monkeypatch.setattr(base, "live_in_ram", lambda modules: False)
    host = load_host("toy", device="cpu")
    (unet,) = host.trainable_modules()
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    with host.weights_kept(spill_dir=tmp_path):
        with torch.no_grad():
            unet.to(torch.float64)
            for p in unet.parameters():
                p.mul_(2.0)
        assert list(tmp_path.iterdir()) == []  # nothing spilled to a file
    now = unet.state_dict()
    assert all(now[k].dtype == v.dtype and torch.equal(now[k], v) for k, v in before.items())

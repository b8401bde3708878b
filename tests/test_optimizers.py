"""Every optimizer trains Textual Inversion and a hypernetwork (the loss on the training images at fixed timesteps and
noises falls) and resumes exactly (N steps, then N more after a resume, equal 2N in one go).

The model is the toy world's SD1 model (a trained SD1-shaped model as small as tiny-sd1): tiny-sd1's random weights
hardly listen to the prompt, so an embedding could not show that it learned; the data are pink shapes captioned with
[name] where the colour goes, the toy's held-out colour."""
import pytest
import torch

from scal_sdt.host.standalone import load_host
from scal_sdt.toy_world.concepts import make_held_out_colour_set
from scal_sdt.hypernetwork.apply import apply_hypernetwork, remove_hypernetwork
from scal_sdt.hypernetwork.config import HypernetworkConfig
from scal_sdt.hypernetwork.trainer import train_hypernetwork
from scal_sdt.textual_inversion.config import EmbeddingConfig
from scal_sdt.textual_inversion.create import init_vectors
from scal_sdt.textual_inversion.format import load_embedding
from scal_sdt.textual_inversion.trainer import train_embedding
from scal_sdt.training.optimizers import OPTIMIZERS, effective_lr, evaluating, make_optimizer
from scal_sdt.training.validation import heldout_loss
from recording import RecordingReporter as Collect
from text_aware import latents_of

N = 8  # steps before and after the resume
TIMESTEPS = (200, 400, 600, 800)
#: rates for 2N steps on the tiny model: Lion's sign steps want a tenth; the learning-rate-free ones get 1.0
RATES = {"adamw": (0.05, 2e-3), "adafactor": (0.05, 2e-3), "lion": (0.005, 2e-4), "came": (0.05, 2e-4),
         "schedulefree-adamw": (0.05, 2e-3), "prodigy": (None, None), "dadapt-adam": (None, None),
         "adamw8bit": (0.05, 2e-3)}
CPU_OPTIMIZERS = [o for o in OPTIMIZERS if o != "adamw8bit" or torch.cuda.is_available()]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("optimizers")
    host = load_host("toy", device="cpu")
    make_held_out_colour_set(root / "train", 4, seed=3)
    return host, root / "train", latents_of(host, root / "train")


def _runs(make_cfg, train, host, tmp_path):
    """(uninterrupted 2N, first N then resumed to 2N) results."""
    full = train(make_cfg(tmp_path / "a"), host, Collect())
    part = train(make_cfg(tmp_path / "b"), host, Collect(stop_at=N))
    assert part.interrupted and part.step == N
    rest = train(make_cfg(tmp_path / "b", resume=True), host, Collect())
    assert rest.step == 2 * N
    return full, part, rest


@pytest.mark.parametrize("optimizer", CPU_OPTIMIZERS)
def test_textual_inversion_learns_and_resumes_exactly(world, tmp_path, optimizer, record_property):
    host, data, latents = world
    lr = RATES[optimizer][0]

    def cfg(folder, **kw):
        return EmbeddingConfig(model="toy", data=str(data), name="zq", init_text="red", steps=2 * N,
                               batch_size=2, template="filewords", latent_sampling="deterministic", optimizer=optimizer,
                               out=str(folder / "emb"), log_dir=str(folder / "run"), save_every=0, preview_every=0,
                               **({"lr": str(lr)} if lr else {}), **kw)

    full, part, rest = _runs(cfg, train_embedding, host, tmp_path)
    assert part.losses + rest.losses == pytest.approx(full.losses, rel=1e-6, abs=1e-7)
    a, b = (load_embedding(r.final_path).vectors["*"] for r in (full, rest))
    assert torch.allclose(a, b, rtol=0, atol=1e-6)

    prompts = [p.read_text().strip().replace("[name]", "zq") for p in sorted(data.glob("*.txt"))]

    def loss(vectors):
        return heldout_loss(host, latents, prompts, {"zq": vectors}, timesteps=TIMESTEPS)

    before, after = loss(init_vectors(host, "red", 1)), loss({"clip_l": a})
    record_property("loss", f"{before:.5f} -> {after:.5f}; resumed max |dv| {(a - b).abs().max().item():.2e}")
    if optimizer == "prodigy":  # its step size starts at d0 = 1e-6 and is still growing after 16 steps
        assert after < before, (optimizer, before, after)
    else:
        assert after < 0.97 * before, (optimizer, before, after)


@pytest.mark.parametrize("optimizer", CPU_OPTIMIZERS)
def test_hypernetwork_learns_and_resumes_exactly(world, tmp_path, optimizer, record_property):
    host, data, latents = world
    lr = RATES[optimizer][1]

    def cfg(folder, **kw):
        return HypernetworkConfig(model="toy", data=str(data), name="hn", steps=2 * N, batch_size=2,
                                  template="filewords", latent_sampling="deterministic", optimizer=optimizer,
                                  lr=str(lr) if lr else "auto", out=str(folder / "hn"), log_dir=str(folder / "run"),
                                  save_every=0, preview_every=0, **kw)

    full, part, rest = _runs(cfg, train_hypernetwork, host, tmp_path)
    assert part.losses + rest.losses == pytest.approx(full.losses, rel=1e-6, abs=1e-7)
    prompts = [p.read_text().strip().replace("[name]", "hn") for p in sorted(data.glob("*.txt"))]
    before = heldout_loss(host, latents, prompts, timesteps=TIMESTEPS)
    outs = []
    for r in (full, rest):
        apply_hypernetwork(host, r.final_path, 1.0)
        outs.append(heldout_loss(host, latents, prompts, timesteps=TIMESTEPS))
        remove_hypernetwork(host)
    record_property("loss", f"{before:.5f} -> {outs[0]:.5f} (resumed run's file {outs[1]:.5f})")
    assert outs[1] == pytest.approx(outs[0], rel=1e-6)
    if optimizer in ("prodigy", "dadapt-adam"):  # their step size is still warming up from d0 after 16 steps
        assert outs[0] <= 1.01 * before, (optimizer, before, outs[0])
    else:  # 16 steps move a hypernetwork's held-out loss by a few per cent (Lion: 0.1486 -> 0.1469)
        assert outs[0] < before, (optimizer, before, outs[0])


def test_learning_rate_free_optimizers_take_their_default_and_say_so():
    cfg = EmbeddingConfig(name="x", optimizer="prodigy")
    assert effective_lr(cfg)[0] == "1.0" and "lr 1.0" in effective_lr(cfg)[1]
    assert effective_lr(EmbeddingConfig(name="x", optimizer="prodigy", lr="0.5")) == ("0.5", None)
    assert effective_lr(HypernetworkConfig(name="x", optimizer="dadapt-adam"))[0] == "1.0"  # lr auto
    assert effective_lr(EmbeddingConfig(name="x")) == ("0.005", None)
    with pytest.raises(ValueError, match="fused_backward"):
        from scal_sdt.dreambooth.config import DreamBoothConfig

        DreamBoothConfig(name="x", instance_data="d", fused_backward=True, optimizer="prodigy")


def test_schedule_free_saves_its_average_and_trains_on_bit_identical_weights():
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
    opt = make_optimizer("schedulefree-adamw", [{"params": [w]}], lr=0.1, weight_decay=0.0)
    for _ in range(5):
        opt.zero_grad()
        (w ** 2).sum().backward()
        opt.step()
    training = w.detach().clone()
    with evaluating(opt, [w]):
        averaged = w.detach().clone()
    assert not torch.equal(averaged, training)  # the average is what is saved
    assert torch.equal(w.detach(), training)  # and training goes on from exactly where it was
    plain = torch.nn.Parameter(torch.ones(2))
    adam = make_optimizer("adamw", [{"params": [plain]}], lr=0.1, weight_decay=0.0)
    with evaluating(adam, [plain]):
        assert torch.equal(plain.detach(), torch.ones(2))
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_optimizer("sgd", [{"params": [plain]}], lr=0.1, weight_decay=0.0)

"""The diffusion objective's knobs, each against its formula (training/objective.py)."""
import math
from types import SimpleNamespace

import pytest
import torch

from scal_sdt.host.schedule import NoiseSchedule, scaled_linear_alphas_cumprod
from scal_sdt.training.objective import (NoisedBatch, Objective, debiased_weights, elementwise_loss, min_snr_weights,
                                         parse_timestep_range, zero_terminal_snr)
from scal_sdt.training.options import TrainingOptions
from scal_sdt.training.validation import heldout_loss

EPS = NoiseSchedule(scaled_linear_alphas_cumprod(), "epsilon")
V = NoiseSchedule(scaled_linear_alphas_cumprod(), "v_prediction")


def batch(n=4, c=4, h=8, w=8, masks=None, image_weights=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    return SimpleNamespace(latents=torch.randn(n, c, h, w, generator=g), weights=masks, image_weights=image_weights,
                           captions=[""] * n)


def snr_by_hand(t):
    a = scaled_linear_alphas_cumprod()[t].double()
    return a / (1 - a)


def test_defaults_draw_and_weigh_exactly_as_before():
    """Noise, then timesteps, from the job's generator; the batch-level masked mean: the trainers' earlier code."""
    mask = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    b = batch(masks=mask)
    nb = Objective(EPS).noised(b, torch.Generator().manual_seed(7), "cpu")
    g = torch.Generator().manual_seed(7)
    noise = torch.randn(b.latents.shape, generator=g)
    t = torch.randint(0, 1000, (4,), generator=g)
    assert torch.equal(nb.noise, noise) and torch.equal(nb.t, t)
    assert torch.equal(nb.x_t, EPS.add_noise(b.latents, noise, t)) and nb.size == (64, 64)
    out = torch.randn(4, 4, 8, 8)
    err = (out - noise) ** 2
    assert torch.equal(Objective(EPS)(nb, out), (err * mask).sum() / (mask.sum() * 4))


@pytest.mark.parametrize("schedule", [EPS, V])
def test_min_snr_weights_follow_the_formula(schedule):
    t = torch.tensor([0, 10, 100, 400, 999])
    snr = snr_by_hand(t)
    denom = snr + 1 if schedule is V else snr
    expect = torch.minimum(snr, torch.full_like(snr, 5.0)) / denom
    assert torch.allclose(min_snr_weights(schedule, t, 5.0).double(), expect, rtol=1e-5)
    # high noise (SNR < gamma) keeps full weight for ε; low noise (SNR >> gamma) is cut to gamma/SNR
    assert min_snr_weights(EPS, torch.tensor([999]), 5.0).item() == pytest.approx(1.0)
    nb = Objective(schedule).noised(batch(n=5), torch.Generator().manual_seed(0), "cpu")
    nb.t = t
    out = torch.randn_like(nb.x0)
    per_image = ((out - schedule.target(nb.x0, nb.noise, t)) ** 2).mean(dim=(1, 2, 3))
    weighted = Objective(schedule, min_snr_gamma=5.0)(nb, out)
    assert weighted.item() == pytest.approx((per_image * expect.float()).mean().item(), rel=1e-5)


def test_debiased_weights_are_one_over_root_snr():
    t = torch.tensor([1, 50, 500, 999])
    snr = snr_by_hand(t)
    assert torch.allclose(debiased_weights(EPS, t).double(), 1 / snr.sqrt(), rtol=1e-5)
    assert torch.allclose(debiased_weights(V, t).double(), 1 / (snr + 1), rtol=1e-5)
    assert debiased_weights(EPS, torch.tensor([0])).item() == pytest.approx(1 / math.sqrt(1000))  # SNR capped at 1000
    both = Objective(EPS, min_snr_gamma=5.0, debiased_estimation=True).timestep_weights(t)
    assert torch.allclose(both, min_snr_weights(EPS, t, 5.0) * debiased_weights(EPS, t))


def test_huber_is_mse_for_large_c_and_l1_like_for_small_c():
    """Asserted: pseudo-Huber 2c(√(d²+c²)−c) equals d² (the MSE element) to 1e-5 relative at c = 1000, and
    2c|d| at c = 1e-4 (where |d| > 0.01); smooth-l1 is the same divided by c (so c·smooth-l1 → d², smooth-l1 → 2|d|)."""
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(1000, generator=g, dtype=torch.float64), torch.randn(1000, generator=g,
                                                                                   dtype=torch.float64)
    d = (pred - target).abs()
    assert torch.allclose(elementwise_loss(pred, target, "mse"), d.float() ** 2)
    big, small = 1000.0, 1e-4
    assert torch.allclose(elementwise_loss(pred, target, "huber", big), d.float() ** 2, rtol=1e-5)
    assert torch.allclose(big * elementwise_loss(pred, target, "smooth-l1", big), d.float() ** 2, rtol=1e-5)
    far = d > 0.01  # |d| >> c
    assert torch.allclose(elementwise_loss(pred, target, "huber", small)[far], 2 * small * d.float()[far], rtol=1e-2)
    assert torch.allclose(elementwise_loss(pred, target, "smooth-l1", small)[far], 2 * d.float()[far], rtol=1e-2)
    # less pulled by an outlier than MSE: one error of 10 among small ones weighs 10x less at c = 0.1
    assert elementwise_loss(torch.tensor([10.0]), torch.tensor([0.0]), "huber", 0.1).item() == pytest.approx(
        2 * 0.1 * (math.sqrt(100.01) - 0.1), rel=1e-6)


def test_logit_normal_timesteps_follow_their_histogram():
    n = 40000
    t = Objective(EPS, timestep_distribution="logit-normal").timesteps(n, torch.Generator().manual_seed(0))
    assert t.min() >= 0 and t.max() <= 999
    edges = torch.arange(0, 1001, 100)
    counts = torch.histc(t.float(), bins=10, min=0, max=1000) / n
    # P(t < k) = P(sigmoid(z) < k/1000) = Φ(logit(k/1000))
    phi = lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2)))  # noqa: E731
    cdf = [0.0] + [phi(math.log(k / (1000 - k))) for k in edges[1:-1].tolist()] + [1.0]
    expect = torch.tensor([cdf[i + 1] - cdf[i] for i in range(10)])
    assert torch.allclose(counts, expect, atol=0.01), (counts, expect)
    assert counts[4] > 2 * counts[0]  # the middle, not the ends
    uniform = torch.histc(Objective(EPS).timesteps(n, torch.Generator().manual_seed(0)).float(), 10, 0, 1000) / n
    assert torch.allclose(uniform, torch.full((10,), 0.1), atol=0.01)


@pytest.mark.parametrize("distribution", ["uniform", "logit-normal"])
def test_timestep_range_bounds(distribution):
    objective = Objective.of(TrainingOptions(timestep_range="200,800", timestep_distribution=distribution), EPS)
    t = objective.timesteps(20000, torch.Generator().manual_seed(1))
    assert t.min() >= 200 and t.max() <= 799
    assert t.min() < 215 and t.max() > 785
    assert parse_timestep_range("", 1000) == (0, 1000)
    for bad in ("800,200", "0", "a,b", "0,1001"):
        with pytest.raises(ValueError, match="timestep_range"):
            parse_timestep_range(bad)


def test_offset_noise_shifts_each_image_and_channel_by_one_draw():
    b = batch(n=256, h=32, w=32)
    nb = Objective(EPS, noise_offset=0.5).noised(b, torch.Generator().manual_seed(5), "cpu")
    g = torch.Generator().manual_seed(5)
    plain = torch.randn(b.latents.shape, generator=g)
    shift = 0.5 * torch.randn((256, 4, 1, 1), generator=g)
    assert torch.equal(nb.noise, plain + shift)
    means = nb.noise.mean(dim=(2, 3))
    # each channel's mean is its shift plus white noise's 1/32 spread: variance 0.25 + 1/1024
    assert means.var().item() == pytest.approx(0.25 + 1 / 1024, rel=0.1)
    assert Objective(EPS).noised(b, torch.Generator().manual_seed(5), "cpu").noise.mean(dim=(2, 3)).var() < 0.002


def test_multires_noise_is_unit_variance_with_more_low_frequencies():
    b = batch(n=64, h=64, w=64)
    white = Objective(EPS).noised(b, torch.Generator().manual_seed(2), "cpu").noise
    pyramid = Objective(EPS, multires_noise_iterations=6, multires_noise_discount=0.3).noised(
        b, torch.Generator().manual_seed(2), "cpu").noise
    assert pyramid.std().item() == pytest.approx(1.0, abs=1e-5)
    coarse = lambda x: torch.nn.functional.avg_pool2d(x, 16).var().item()  # noqa: E731
    assert coarse(white) == pytest.approx(1 / 256, rel=0.2)
    assert coarse(pyramid) > 1.5 * coarse(white)  # measured 0.0069 vs 0.0039 (kohya's default 6, 0.3)
    # one iteration adds only noise of the same scale: no more low frequencies than white noise
    one = Objective(EPS, multires_noise_iterations=1).noised(b, torch.Generator().manual_seed(2), "cpu").noise
    assert coarse(one) == pytest.approx(coarse(white), rel=0.1)


def test_input_perturbation_noises_the_input_more_than_the_target():
    b = batch(n=64, h=16, w=16)
    nb = Objective(EPS, input_perturbation=0.1).noised(b, torch.Generator().manual_seed(4), "cpu")
    g = torch.Generator().manual_seed(4)
    noise = torch.randn(b.latents.shape, generator=g)
    t = torch.randint(0, 1000, (64,), generator=g)
    extra = torch.randn(b.latents.shape, generator=g)
    assert torch.equal(nb.noise, noise) and torch.equal(nb.t, t)  # the target is made of the plain noise
    assert torch.allclose(nb.x_t, EPS.add_noise(b.latents, noise + 0.1 * extra, t), atol=1e-6)
    s1a = (1 - EPS.alphas_cumprod[t]).sqrt().view(-1, 1, 1, 1)
    assert ((nb.x_t - EPS.add_noise(b.latents, noise, t)) / s1a).std().item() == pytest.approx(0.1, rel=0.05)


def test_zero_terminal_snr_rescales_only_for_v_models():
    ac = scaled_linear_alphas_cumprod()
    z = zero_terminal_snr(ac)
    assert z[-1].item() == 0.0 and z[0].item() == pytest.approx(ac[0].item(), rel=1e-6)
    assert (z[1:] <= z[:-1]).all()
    opts = TrainingOptions(zero_terminal_snr=True)
    assert Objective.of(opts, V).schedule.alphas_cumprod[-1].item() == 0.0
    with pytest.raises(ValueError, match="v-prediction"):
        Objective.of(opts, EPS)


def test_image_weights_scale_each_images_loss():
    b = batch(n=2, image_weights=torch.tensor([1.0, 3.0]))
    nb = Objective(EPS).noised(b, torch.Generator().manual_seed(0), "cpu")
    out = torch.randn_like(nb.x0)
    per = ((out - nb.noise) ** 2).mean(dim=(1, 2, 3))
    assert Objective(EPS)(nb, out).item() == pytest.approx(((per[0] + 3 * per[1]) / 2).item(), rel=1e-6)


def test_validation_loss_honours_masks_as_training_does(tiny_hosts):
    """A prediction wrong only where the mask is 0 leaves both losses as they were; the held-out loss at one
    timestep is the training loss of the same draw."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 4, 8, 8, generator=g)
    mask = torch.ones(2, 1, 8, 8)
    mask[..., 4:] = 0

    def model(spoil):
        def predict(x_t, t):
            out = EPS.target(x0, (x_t - EPS._coeffs(t, x0)[0] * x0) / EPS._coeffs(t, x0)[1], t) + 0.1
            if spoil:
                out = out.clone()
                out[..., 4:] += 5.0
            return out
        return predict

    objective = Objective(EPS)
    clean = objective.heldout(model(False), x0, mask, timesteps=(500,))
    assert objective.heldout(model(True), x0, mask, timesteps=(500,)) == pytest.approx(clean, rel=1e-5)
    assert objective.heldout(model(True), x0, None, timesteps=(500,)) > 10 * clean  # without the mask it counts
    gen = torch.Generator().manual_seed(1234)
    noise = torch.randn(x0.shape, generator=gen)
    t = torch.full((2,), 500)
    nb = NoisedBatch(SimpleNamespace(weights=mask), x0, noise, t, EPS.add_noise(x0, noise, t), (64, 64))
    assert objective(nb, model(True)(nb.x_t, t)).item() == pytest.approx(clean, rel=1e-5)
    # on a model: heldout_loss takes the masks too, and a zero region changes it
    host = tiny_hosts("tiny-sd1")
    latents = torch.randn(1, 4, 8, 8, generator=g)
    half = torch.ones(1, 1, 8, 8)
    half[..., :, 4:] = 0
    plain = heldout_loss(host, latents, ["a photo"], timesteps=(300,))
    masked = heldout_loss(host, latents, ["a photo"], timesteps=(300,), masks=half)
    assert plain != pytest.approx(masked, rel=1e-3)
    by_hand = Objective(host.schedule).heldout(
        lambda x_t, t: host.predict(x_t, t, host.encode_prompts(["a photo"], size=(64, 64))), latents, half, (300,))
    assert masked == pytest.approx(by_hand, rel=1e-5)


def test_the_knobs_are_options_of_every_trainer():
    from scal_sdt.config import to_dict
    from scal_sdt.dreambooth.config import DreamBoothConfig
    from scal_sdt.hypernetwork.config import HypernetworkConfig
    from scal_sdt.textual_inversion.config import EmbeddingConfig

    for cls, kw in ((EmbeddingConfig, {}), (HypernetworkConfig, {}), (DreamBoothConfig, {"instance_data": "x"})):
        cfg = cls(name="k", min_snr_gamma=5.0, loss="huber", timestep_range="100,900", noise_offset=0.05, **kw)
        saved = to_dict(cfg)
        assert saved["min_snr_gamma"] == 5.0 and saved["loss"] == "huber" and saved["timestep_range"] == "100,900"
        with pytest.raises(ValueError, match="timestep_range"):
            cls(name="k", timestep_range="900,100", **kw)

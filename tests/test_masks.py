"""Masked training: the preview shows the loss weight, and a zero weight removes exactly those pixels from the loss."""
import numpy as np
import pytest
import torch
from PIL import Image

from scal_sdt.demo_data import make_concept_folder
from scal_sdt.textual_inversion.config import EmbeddingConfig
from scal_sdt.textual_inversion.create import init_vectors
from scal_sdt.textual_inversion.trainer import EmbeddingJob
from scal_sdt.training.dataset import LatentDataset
from scal_sdt.training.images import scan_folder
from scal_sdt.training.mask_preview import TINT, mask_preview, write_mask_previews

SIZE = 64


def half_mask(path, keep_right=True):
    """0 on the left half, 255 on the right (or the other way round)."""
    mask = Image.new("L", (SIZE, SIZE), 0 if keep_right else 255)
    mask.paste(255 if keep_right else 0, (SIZE // 2, 0, SIZE, SIZE))
    mask.save(path)
    return path


def noise_image(path, seed=0, mode="RGB"):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, len(mode)), dtype=np.uint8), mode).save(path)
    return path


def distance_to_tint(pixels):
    return np.abs(pixels.astype(np.float32) - np.asarray(TINT, dtype=np.float32)).sum(-1)


# -- the preview ----------------------------------------------------------------------------------------------

def test_preview_tints_the_masked_out_half_and_leaves_the_kept_half_alone(tmp_path):
    image = noise_image(tmp_path / "a.png")
    plain = np.asarray(mask_preview(image, None, False, SIZE))
    shown = np.asarray(mask_preview(image, half_mask(tmp_path / "a_mask.png"), False, SIZE))
    left, right = slice(0, SIZE // 2), slice(SIZE // 2, SIZE)
    assert np.array_equal(shown[:, right], plain[:, right])  # weight 1: unchanged, bit for bit
    assert (distance_to_tint(shown[:, left]) < distance_to_tint(plain[:, left])).all()  # weight 0: towards the tint


def test_preview_reads_the_alpha_only_when_asked(tmp_path):
    rgba = np.asarray(Image.open(noise_image(tmp_path / "a.png", mode="RGBA"))).copy()
    rgba[:, : SIZE // 2, 3], rgba[:, SIZE // 2:, 3] = 0, 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    shown = np.asarray(mask_preview(tmp_path / "a.png", None, True, SIZE))
    assert np.array_equal(shown[:, SIZE // 2:], rgba[:, SIZE // 2:, :3])
    assert (distance_to_tint(shown[:, : SIZE // 2]) < distance_to_tint(rgba[:, : SIZE // 2, :3])).all()
    composited = np.asarray(mask_preview(tmp_path / "a.png", None, False, SIZE))
    assert (composited[:, : SIZE // 2] == 255).all()  # no weight: transparent pixels are white, not tinted


def test_preview_keeps_the_aspect_ratio_within_size(tmp_path):
    Image.new("RGB", (200, 100), "white").save(tmp_path / "wide.png")
    assert mask_preview(tmp_path / "wide.png", None, False, 50).size == (50, 25)


def test_contact_sheet_holds_only_the_images_with_a_weight(tmp_path):
    for i in range(3):
        noise_image(tmp_path / f"{i}.png", seed=i)
    half_mask(tmp_path / "0_mask.png")
    half_mask(tmp_path / "2_mask.png", keep_right=False)
    Image.new("L", (SIZE, SIZE), 255).save(tmp_path / "1_mask.png")  # uniform: changes nothing, not shown
    items = scan_folder(tmp_path).items
    paths = write_mask_previews(items, tmp_path / "run", alpha_as_weight=False, size=32)
    assert paths == [tmp_path / "run" / "masks.png"]
    assert Image.open(paths[0]).size == (2 * 32 + 2, 32)  # two cells side by side, 2 px apart
    assert len(write_mask_previews(items, tmp_path / "one", alpha_as_weight=False, limit=1, size=32)) == 1
    assert Image.open(tmp_path / "one" / "masks.png").size == (32, 32)


def test_no_sheet_without_weights(tmp_path):
    noise_image(tmp_path / "a.png")
    noise_image(tmp_path / "b.png", mode="RGBA")  # alpha, but only used with alpha_as_weight
    items = scan_folder(tmp_path).items
    assert write_mask_previews(items, tmp_path / "run", alpha_as_weight=False) == []
    assert not (tmp_path / "run").exists()


# -- the loss -------------------------------------------------------------------------------------------------

def ti_job(tmp_path, host, data):
    """An EmbeddingJob built as train_embedding builds one, over ``data`` (64 px, batches of 2)."""
    cfg = EmbeddingConfig(name="zq", data=str(data), resolution=SIZE, batch_size=2, seed=0, template="subject")
    dataset = LatentDataset(scan_folder(data), resolution=SIZE, buckets=False, encode_moments=host.encode_moments,
                            batch_size=2, seed=0)
    start = init_vectors(host, cfg.init_text, cfg.vectors)
    vectors = {k: torch.nn.Parameter(v.to(host.device, torch.float32)) for k, v in start.items()}
    return EmbeddingJob(cfg, host, dataset, vectors, ["a photo of [name]"], tmp_path / "run"), dataset


def unet_output_gradient(job, host):
    """Run one loss and backward; return the batch weights and the gradient of the loss w.r.t. the UNet output."""
    outputs = []

    def keep(module, args, output):
        output.sample.retain_grad()
        outputs.append(output.sample)

    hook = host.components.unet.register_forward_hook(keep)
    try:
        loss = job.loss()
    finally:
        hook.remove()
    loss.backward()
    (vector,) = job.vectors.values()
    assert vector.grad is not None and vector.grad.abs().sum() > 0  # the embedding learns in both cases
    return outputs[0].grad


def test_a_zero_mask_removes_exactly_its_latent_columns_from_the_gradient(tmp_path, tiny_hosts):
    host = tiny_hosts("tiny-sd1")
    data = make_concept_folder(tmp_path / "masked", count=4, size=SIZE)
    for image in sorted(data.glob("*.png")):
        half_mask(data / f"{image.stem}_mask.png")
    job, dataset = ti_job(tmp_path, host, data)
    h = w = SIZE // host.latent_factor
    weights = dataset.entries[0].weight[0, 0]
    assert weights.shape == (h, w)
    assert (weights[:, : w // 2] == 0).all() and torch.allclose(weights[:, w // 2:], torch.tensor(2.0))  # mean 1

    grad = unet_output_gradient(job, host)
    assert grad.shape[-2:] == (h, w)
    assert (grad[..., : w // 2] == 0).all()  # masked-out columns: exactly no gradient
    assert (grad[..., w // 2:].abs().amax(dim=1) > 0).all()  # kept columns: every latent pixel has one


def test_without_masks_every_latent_pixel_has_a_gradient(tmp_path, tiny_hosts):
    host = tiny_hosts("tiny-sd1")
    job, dataset = ti_job(tmp_path, host, make_concept_folder(tmp_path / "plain", count=4, size=SIZE))
    assert all(e.weight is None for e in dataset.entries)
    grad = unet_output_gradient(job, host)
    assert (grad.abs().amax(dim=1) > 0).all()


def test_an_all_zero_mask_skips_its_image_with_a_reason(tmp_path, tiny_hosts):
    host = tiny_hosts("tiny-sd1")
    data = make_concept_folder(tmp_path / "data", count=2, size=SIZE)
    Image.new("L", (SIZE, SIZE), 0).save(data / "000_mask.png")
    dataset = LatentDataset(scan_folder(data), resolution=SIZE, buckets=False, encode_moments=host.encode_moments)
    assert [item.path.name for item in dataset.items] == ["001.png"]
    assert [(p.name, reason) for p, reason in dataset.skipped] == [
        ("000.png", "its loss weight (mask or alpha) is zero everywhere")]
    with pytest.raises(ValueError, match="zero everywhere"):  # and when every image is masked out, the error says why
        Image.new("L", (SIZE, SIZE), 0).save(data / "001_mask.png")
        LatentDataset(scan_folder(data), resolution=SIZE, buckets=False, encode_moments=host.encode_moments)

"""Textual Inversion learns the concept in its images.

On each tiny family (made text-aware in seconds, see text_aware.py) an embedding starts from the WRONG words,
"blue circle", and is trained on orange stars. On held-out orange stars (never trained on; fixed timesteps and
noises) its loss must close at least half of the gap between its init text and the true words "an orange star".
Measured when written: sd1 95 %, sd2 114 %, sdxl 103 % of the gap closed."""
import pytest

from scal_sdt.demo_data import make_concept_folder
from scal_sdt.textual_inversion.config import EmbeddingConfig
from scal_sdt.textual_inversion.create import init_vectors
from scal_sdt.textual_inversion.format import load_embedding
from scal_sdt.textual_inversion.trainer import train_embedding
from scal_sdt.training.report import Reporter
from scal_sdt.training.validation import heldout_loss
from text_aware import latents_of, text_aware_host

TIMESTEPS = (200, 400, 600, 800)


@pytest.mark.parametrize("family", ["tiny-sd1", "tiny-sd2", "tiny-sdxl"])
def test_trained_embedding_recovers_the_concept_on_held_out_images(tmp_path, family):
    host = text_aware_host(family, tmp_path, steps=200)
    train = make_concept_folder(tmp_path / "train", "star", "orange", 12, seed=10, background="white")
    held = latents_of(host, make_concept_folder(tmp_path / "held", "star", "orange", 8, seed=11, background="white"))
    template = tmp_path / "name.txt"
    template.write_text("[name]\n")
    cfg = EmbeddingConfig(model=family, data=str(train), name="zq", init_text="blue circle", vectors=2, steps=100,
                          lr="0.05", lr_schedule="cosine", batch_size=4, template=str(template),
                          latent_sampling="deterministic", out=str(tmp_path / "emb"), log_dir=str(tmp_path / "run"),
                          save_every=0, preview_every=0)
    result = train_embedding(cfg, host, Reporter())
    learned = load_embedding(result.final_path).for_encoders(list(host.widths))

    def loss(prompt, vectors=None):
        return heldout_loss(host, held, [prompt] * len(held), {"zq": vectors} if vectors else None, timesteps=TIMESTEPS)

    truth, start, after = loss("an orange star"), loss("zq", init_vectors(host, "blue circle", 2)), loss("zq", learned)
    assert start > truth, f"{family}: the base model does not tell the concepts apart ({start:.5f} vs {truth:.5f})"
    closed = (start - after) / (start - truth)
    assert closed > 0.5, (f"{family}: held-out loss {after:.5f} learned, {start:.5f} init text, {truth:.5f} true "
                          f"words: only {closed:.0%} of the gap closed")

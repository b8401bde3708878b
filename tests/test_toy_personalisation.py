"""Personalisation on the toy world: teach the shipped toy model a concept it has never seen.

The toy model's base training never showed the held-out colour (pink). A Textual Inversion embedding trained on
16 captioned pictures of pink shapes must make the model draw pink when its name stands where the colour goes;
before training (the embedding at its init text) the judge almost never sees pink."""
from __future__ import annotations

from scal_sdt.host.standalone import load_host
from scal_sdt.textual_inversion.config import EmbeddingConfig
from scal_sdt.textual_inversion.create import init_vectors
from scal_sdt.textual_inversion.format import load_embedding
from scal_sdt.textual_inversion.trainer import train_embedding
from scal_sdt.toy_world.build import JUDGE, PRETRAINED
from scal_sdt.toy_world.concepts import held_out_colour_caption, make_held_out_colour_set
from scal_sdt.toy_world.judge import Judge
from scal_sdt.toy_world.quality import prompt_accuracy, prompt_set
from scal_sdt.toy_world.world import HELD_OUT, SHAPES
from scal_sdt.training.report import Reporter

NAME = "toy-pink"
STEPS, LR = 400, "0.02"  # about 25 s on two CPU cores
#: the LoRA run of test_lora_with_pivotal_tuning_teaches_the_held_out_colour (README quality table): half
#: DreamBooth's steps at 20x its rate (the embedding's rate doubled alongside) keeps the test near a minute
LORA_QUALITY = dict(network="lora", rank=8, alpha=8, lr="2e-3", steps=200, batch_size=4, pivotal_lr=0.04)


def test_held_out_colour_captions_put_the_name_where_the_colour_goes(tmp_path):
    scenes = make_held_out_colour_set(tmp_path, 6, seed=1)
    assert all(s.colour == HELD_OUT["colour"] and s.shape != HELD_OUT["shape"] for s in scenes)
    text = (tmp_path / "00000.txt").read_text().strip()
    assert text == held_out_colour_caption(scenes[0]) and "[name]" in text and "pink" not in text


def test_embedding_teaches_the_toy_model_the_held_out_colour(tmp_path):
    vectors = 1
    host = load_host("toy", device="cpu")
    judge = Judge.load(PRETRAINED / JUDGE)
    data = tmp_path / "pink"
    make_held_out_colour_set(data, 16, seed=5)
    shapes = [s for s in SHAPES if s != HELD_OUT["shape"]]
    triples = prompt_set(32, seed=77, shapes=shapes, colours=[HELD_OUT["colour"]])
    words = {HELD_OUT["colour"]: NAME}

    start = init_vectors(host, "red", vectors)
    before = prompt_accuracy(host, judge, triples, seed=9, colour_words=words, embeddings={NAME: start})
    cfg = EmbeddingConfig(model="toy", data=str(data), name=NAME, init_text="red", vectors=vectors, steps=STEPS,
                          lr=LR, batch_size=8, template="filewords", out=str(tmp_path / "emb"),
                          log_dir=str(tmp_path / "run"), save_every=0, preview_every=0, device="cpu")
    result = train_embedding(cfg, host, Reporter())
    learned = load_embedding(result.final_path).for_encoders(list(host.widths))
    after = prompt_accuracy(host, judge, triples, seed=9, colour_words=words, embeddings={NAME: learned})
    assert before["colour"] <= 0.1, before
    assert after["colour"] >= 0.2, (before, after)  # measured: 0.0 before, 0.34 after (chance 1/12)


def pivotal_setting(tmp_path):
    """The DreamBooth / LoRA pivotal setting: the toy model and judge, 16 pink pictures ("a medium sks diamond ..."),
    64 real pictures of the other colours as class images, the held-out prompts with "sks" for pink, and prompts of
    the other colours."""
    from scal_sdt.toy_world.world import make_dataset

    host = load_host("toy", device="cpu")
    judge = Judge.load(PRETRAINED / JUDGE)
    data, reg = tmp_path / "pink", tmp_path / "reg"
    make_held_out_colour_set(data, 16, seed=5)
    make_dataset(reg, 64, seed=8)
    shapes = [s for s in SHAPES if s != HELD_OUT["shape"]]
    triples = prompt_set(32, seed=77, shapes=shapes, colours=[HELD_OUT["colour"]])
    return host, judge, data, reg, triples, {HELD_OUT["colour"]: "sks"}, prompt_set(32, seed=78)


def test_dreambooth_with_pivotal_tuning_teaches_the_held_out_colour(tmp_path):
    """DreamBooth on the toy model: the UNet fine-tuned on the 16 pink pictures ("a medium sks diamond ..."), a
    pivotal embedding for "sks" learning along, with real pictures of the other colours as regularisation (prior
    preservation with their own captions). The judge sees pink for "sks" prompts, and the other colours are kept.
    Measured: pink 0.00 -> 0.53, other colours 0.91 after (a UNet-only run did not bind "sks" to pink on the
    previous toy model: 0.00, see the README)."""
    from scal_sdt.dreambooth.config import DreamBoothConfig
    from scal_sdt.dreambooth.trainer import train_dreambooth

    host, judge, data, reg, triples, words, others = pivotal_setting(tmp_path)
    before = prompt_accuracy(host, judge, triples, seed=9, colour_words=words)["colour"]
    cfg = DreamBoothConfig(model="toy", name="sks", instance_data=str(data), instance_prompt="[filewords]",
                           class_data=str(reg), class_prompt="[filewords]", num_class_images=0, steps=400, lr="1e-4",
                           batch_size=4, pivotal_vectors=1, pivotal_init_text="red", pivotal_lr=0.02,
                           embeddings_out=str(tmp_path / "emb"), out=str(tmp_path / "out"), log_dir=str(tmp_path / "run"),
                           preview_every=0, save_every=0, device="cpu")
    with host.weights_kept():
        train_dreambooth(cfg, host, Reporter())
        learned = {"sks": load_embedding(tmp_path / "emb" / "sks.safetensors").for_encoders(list(host.widths))}
        after = prompt_accuracy(host, judge, triples, seed=9, colour_words=words, embeddings=learned)["colour"]
        kept = prompt_accuracy(host, judge, others, seed=11)["colour"]
    assert before <= 0.1 and after >= 0.2, (before, after)
    assert kept >= 0.7, kept


def test_lora_with_pivotal_tuning_teaches_the_held_out_colour(tmp_path):
    """LoRA on the toy model, the DreamBooth pivotal setting above with a rank-8 LoRA learning instead of the whole
    UNet (200 steps at lr 2e-3, the embedding at 0.04): the judge sees pink for "sks" prompts at strength 1 at least
    as often as after DreamBooth, the other colours are kept, and strength 0.5 sits between strength 0 (the embedding
    alone) and 1. Measured: pink 0.72 / 0.28 / 0.00 at strength 1 / 0.5 / 0, other colours 0.94 (rank 16 at 4e-3:
    0.53 / 0.44 / 0.00, 0.94)."""
    from scal_sdt.lora.adapters import load_lora
    from scal_sdt.lora.config import LoraConfig
    from scal_sdt.lora.trainer import train_lora

    host, judge, data, reg, triples, words, others = pivotal_setting(tmp_path)
    cfg = LoraConfig(model="toy", name="sks", instance_data=str(data), instance_prompt="[filewords]",
                     class_data=str(reg), class_prompt="[filewords]", num_class_images=0, **LORA_QUALITY,
                     pivotal_vectors=1, pivotal_init_text="red", embeddings_out=str(tmp_path / "emb"),
                     out=str(tmp_path / "out"), log_dir=str(tmp_path / "run"), preview_every=0, save_every=0,
                     device="cpu")
    result = train_lora(cfg, host, Reporter())
    learned = {"sks": load_embedding(tmp_path / "emb" / "sks.safetensors").for_encoders(list(host.widths))}
    lora = load_lora(result.final_path, host.lora_targets(), "sd1")
    pink = {}
    for strength in (1.0, 0.5, 0.0):
        lora.attach(strength)
        pink[strength] = prompt_accuracy(host, judge, triples, seed=9, colour_words=words, embeddings=learned)["colour"]
        if strength == 1.0:
            kept = prompt_accuracy(host, judge, others, seed=11)["colour"]
        lora.detach()
    assert pink[1.0] >= 0.53, pink  # DreamBooth with pivotal tuning: 0.53
    assert kept >= 0.85, kept
    assert pink[0.0] <= pink[0.5] <= pink[1.0] and pink[0.0] < pink[1.0], pink

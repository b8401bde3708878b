"""Natural-language captioners: a tiny BLIP built in code (real architecture, its own small WordPiece vocabulary),
saved with save_pretrained, read from a folder and from the hub cache, batched, and its sentences merged with a
tagger's tags as asked (prefix, suffix, replace). Nothing is downloaded."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("onnxruntime")

from onnx_taggers import wd14_folder  # noqa: E402
from scal_sdt.tagging.captioner import Captioner, CaptionerError, as_entry, with_sentence  # noqa: E402
from scal_sdt.tagging.config import TagConfig  # noqa: E402
from scal_sdt.tagging.run import tag_folder  # noqa: E402

WORDS = "a cat dog star red blue sitting on the sofa picture of with".split()


def build_tiny_blip(folder):
    import torch
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"] + WORDS
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    torch.manual_seed(0)
    config = BlipConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, encoder_hidden_size=32, intermediate_size=37,
                         num_attention_heads=4, num_hidden_layers=2, bos_token_id=5, pad_token_id=0, sep_token_id=3,
                         max_position_embeddings=64),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                           image_size=32, patch_size=8),
        projection_dim=32)
    BlipForConditionalGeneration(config).eval().save_pretrained(folder)
    tokenizer = BertTokenizer(str(folder / "vocab.txt"), bos_token="[DEC]")
    BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}),
                  tokenizer=tokenizer).save_pretrained(folder)
    return folder


def build_tiny_git(folder):
    import torch
    from transformers import BertTokenizer, CLIPImageProcessor, GitConfig, GitForCausalLM, GitProcessor

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    torch.manual_seed(0)
    config = GitConfig(vision_config=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4,
                                          num_hidden_layers=2, image_size=32, patch_size=8),
                       vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=37, max_position_embeddings=64, bos_token_id=2, eos_token_id=3,
                       pad_token_id=0)
    GitForCausalLM(config).eval().save_pretrained(folder)
    GitProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                 tokenizer=BertTokenizer(str(folder / "vocab.txt"))).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def blip(tmp_path_factory):
    return build_tiny_blip(tmp_path_factory.mktemp("tiny-blip"))


def pictures(folder, n=3):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (24, 30, 3), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    return folder


def test_a_tiny_blip_captions_in_batches(blip, tmp_path):
    captioner = Captioner.load(str(blip), "cpu", max_new_tokens=8)
    assert captioner.kind == "blip"
    images = [Image.open(p) for p in sorted(pictures(tmp_path / "p").glob("*.png"))]
    batch = captioner.caption(images)
    assert len(batch) == 3 and all(batch)
    assert all(set(s.split()) <= set(WORDS) for s in batch)  # the tiny vocabulary's words
    assert batch == [captioner.caption([im])[0] for im in images]  # batching changes nothing


def test_a_tiny_git_captions_too(tmp_path):
    captioner = Captioner.load(str(build_tiny_git(tmp_path / "git")), "cpu", max_new_tokens=6)
    images = [Image.open(p) for p in sorted(pictures(tmp_path / "p", 2).glob("*.png"))]
    got = captioner.caption(images)
    assert captioner.kind == "git" and len(got) == 2 and all(got) and all(set(s.split()) <= set(WORDS) for s in got)


def test_read_from_the_hub_cache_never_downloaded(blip, tmp_path, monkeypatch):
    from huggingface_hub import constants

    snapshot = tmp_path / "hub" / "models--tiny--blip" / "snapshots" / "0123abcd"
    shutil.copytree(blip, snapshot)
    (tmp_path / "hub" / "models--tiny--blip" / "refs").mkdir()
    (tmp_path / "hub" / "models--tiny--blip" / "refs" / "main").write_text("0123abcd")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert Captioner.load("tiny/blip", "cpu", max_new_tokens=4).kind == "blip"
    with pytest.raises(CaptionerError, match="not in your Hugging Face hub cache"):
        Captioner.load("tiny/absent")


def test_remote_code_models_and_missing_folders_are_refused(tmp_path):
    custom = tmp_path / "custom"
    custom.mkdir()
    (custom / "config.json").write_text('{"model_type": "florence2_remote", "auto_map": {"AutoConfig": "x.Y"}}')
    with pytest.raises(CaptionerError, match="remote code"):
        Captioner.load(str(custom))
    with pytest.raises(CaptionerError, match="no such folder"):
        Captioner.load(str(tmp_path / "nothing"))


def test_sentences_and_tags_merge_as_asked():
    tags = ["long hair", "smile"]
    assert with_sentence(tags, "a girl, smiling", "prefix") == ["a girl smiling", "long hair", "smile"]
    assert with_sentence(tags, "a girl", "suffix") == ["long hair", "smile", "a girl"]
    assert with_sentence(tags, "a girl", "replace") == ["a girl"]
    assert with_sentence(tags, "", "replace") == tags and as_entry(" a,  b ") == "a b"
    with pytest.raises(ValueError, match="caption_mode"):
        with_sentence(tags, "x", "middle")


@pytest.mark.parametrize("mode", ["prefix", "suffix", "replace"])
def test_the_tagger_writes_captions_with_the_sentence(blip, tmp_path, mode):
    folder = pictures(tmp_path / "data", 2)
    model = wd14_folder(tmp_path / "wd", ["general", "sensitive", "questionable", "explicit", "long_hair", "smile"],
                        [9, 9, 9, 9, 0, 0], [0.9, 0.1, 0.0, 0.0, 0.9, 0.8])
    cfg = TagConfig(dir=str(folder), model=str(model), cache_dir="", captioner=str(blip), caption_mode=mode,
                    caption_tokens=6, existing="overwrite", batch_size=2)
    report = tag_folder(cfg)
    assert report.written == 2 and not report.failed
    sentence = Captioner.load(str(blip), "cpu", 6).caption([Image.open(folder / "00.png").convert("RGB")])[0]
    caption = (folder / "00.txt").read_text()
    want = {"prefix": f"{sentence}, long hair, smile", "suffix": f"long hair, smile, {sentence}",
            "replace": sentence}[mode]
    assert caption == want
    assert (folder / "00.caption").read_text() == sentence  # the editor shows it beside the tags


def test_bad_caption_options_are_named(tmp_path):
    with pytest.raises(ValueError, match="choose one"):
        TagConfig(dir=str(tmp_path), model="toy", blip=True, captioner="x")
    with pytest.raises(ValueError, match="sentence_extension"):
        TagConfig(dir=str(tmp_path), model="toy", sentence_extension=".txt")


def test_the_dataset_editor_shows_the_sentence_beside_the_tags(tmp_path):
    from scal_sdt.tagging.editor import Dataset

    folder = pictures(tmp_path / "d", 2)
    (folder / "00.txt").write_text("a cat on a sofa, long hair, smile")
    (folder / "00.caption").write_text("a cat on a sofa")
    ds = Dataset(folder)
    assert ds.items[0].tags == ["a cat on a sofa", "long hair", "smile"] and ds.items[0].sentence == "a cat on a sofa"
    assert ds.items[1].sentence == ""
    pytest.importorskip("gradio")
    from scal_sdt.ui.editor_tab import open_session, view

    session = open_session(str(folder), ".txt", "")
    session.current = 0
    _, _, caption, label, _, _ = view(session)
    assert caption == "a cat on a sofa, long hair, smile" and "sentence: a cat on a sofa" in label

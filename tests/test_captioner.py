"""Natural-language captioners: tiny BLIP, GIT, BLIP-2 and Florence-2 built in code (the real architectures at toy
sizes, their own small WordPiece / byte-level BPE vocabularies), saved with save_pretrained, read from a folder and
from the hub cache, batched, and their sentences merged with a tagger's tags as asked (prefix, suffix, replace).
Remote-code models are refused with the reason. Nothing is downloaded."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("onnxruntime")

from onnx_taggers import wd14_folder  # noqa: E402
from scal_sdt.tagging.captioner import (  # noqa: E402
    FLORENCE_TASK, MODEL_CLASSES, Captioner, CaptionerError, as_entry, with_sentence)
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


def byte_level_bpe(folder, specials: list[str]) -> None:
    """vocab.json + merges.txt of a byte-level BPE (GPT-2's, BART's, OPT's kind): ``specials``, the 256 byte
    symbols and WORDS (each a word with its leading space, ``Ġword``, merged left to right)."""
    import json

    from tokenizers.pre_tokenizers import ByteLevel

    vocab = {t: i for i, t in enumerate(specials)}
    for symbol in sorted(ByteLevel.alphabet()):
        vocab.setdefault(symbol, len(vocab))
    merges = []
    for word in WORDS:
        parts = list("Ġ" + word)
        while len(parts) > 1:
            merges.append(f"{parts[0]} {parts[1]}")
            parts = [parts[0] + parts[1], *parts[2:]]
            vocab.setdefault(parts[0], len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(dict.fromkeys(merges)) + "\n")


def word_ids(tokenizer) -> set[int]:
    return {tokenizer.convert_tokens_to_ids("Ġ" + w) for w in WORDS}


def build_tiny_blip2(folder):
    """BLIP-2: a ViT, a Q-Former with 4 queries and an OPT decoder, 32 wide; the OPT tokenizer's kind."""
    import torch
    from transformers import (Blip2Config, Blip2ForConditionalGeneration, Blip2Processor, BlipImageProcessor,
                              GPT2Tokenizer)

    folder.mkdir(parents=True, exist_ok=True)
    byte_level_bpe(folder, ["<pad>", "</s>", "<unk>", "<s>"])
    tokenizer = GPT2Tokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), bos_token="<s>",
                              eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    processor = Blip2Processor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}),
                               tokenizer=tokenizer, num_query_tokens=4)  # adds its <image> token
    torch.manual_seed(0)
    config = Blip2Config(
        vision_config=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=1,
                           image_size=32, patch_size=8),
        qformer_config=dict(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                            intermediate_size=37, encoder_hidden_size=32, max_position_embeddings=64),
        text_config=dict(model_type="opt", vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, ffn_dim=37,
                         num_attention_heads=4, max_position_embeddings=128, word_embed_proj_dim=32,
                         tie_word_embeddings=False, bos_token_id=3, eos_token_id=1, pad_token_id=0),
        num_query_tokens=4, image_token_index=tokenizer.convert_tokens_to_ids("<image>"))
    net = Blip2ForConditionalGeneration(config).eval()
    with torch.no_grad():  # untrained, it would say nothing: only the vocabulary's whole words score above 0
        head = net.language_model.lm_head.weight
        words = torch.zeros(len(head), dtype=torch.bool)
        words[sorted(word_ids(tokenizer))] = True
        head[~words] = 0
        head[words] *= 50
    net.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def build_tiny_florence2(folder):
    """Florence-2 as transformers has it natively: a one-stage DaViT and a BART, 16 wide; BART's tokenizer kind
    with the <image> token; 64 + 1 image tokens for a 32 px picture."""
    import torch
    from transformers import (BartTokenizer, CLIPImageProcessor, Florence2Config, Florence2ForConditionalGeneration,
                              Florence2Processor)

    folder.mkdir(parents=True, exist_ok=True)
    byte_level_bpe(folder, ["<s>", "<pad>", "</s>", "<unk>", "<image>"])
    tokenizer = BartTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"),
                              extra_special_tokens={"image_token": "<image>"})
    torch.manual_seed(0)
    config = Florence2Config(
        text_config=dict(model_type="bart", vocab_size=len(tokenizer), max_position_embeddings=256, d_model=16,
                         encoder_layers=1, decoder_layers=1, encoder_ffn_dim=16, decoder_ffn_dim=16,
                         encoder_attention_heads=2, decoder_attention_heads=2, bos_token_id=0, pad_token_id=1,
                         eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=2),
        vision_config=dict(depths=[1], patch_size=[7], patch_stride=[4], patch_padding=[3], patch_prenorm=[False],
                           embed_dim=[16], num_heads=[1], num_groups=[1], window_size=4, projection_dim=16,
                           drop_path_rate=0.0),
        image_token_id=tokenizer.image_token_id)
    net = Florence2ForConditionalGeneration(config).eval()
    # untrained, it would end at once: at least 4 tokens, only the vocabulary's whole words (and </s>)
    net.generation_config.min_new_tokens = 4
    net.generation_config.suppress_tokens = sorted(set(range(len(tokenizer))) - word_ids(tokenizer) - {2})
    net.save_pretrained(folder)
    images = CLIPImageProcessor(size={"height": 32, "width": 32}, do_center_crop=False)
    images.image_seq_length = 65
    Florence2Processor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder)
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


def test_a_tiny_blip2_captions_with_and_without_a_prompt(tmp_path):
    folder = build_tiny_blip2(tmp_path / "blip2")
    images = [Image.open(p) for p in sorted(pictures(tmp_path / "p").glob("*.png"))]
    captioner = Captioner.load(str(folder), "cpu", max_new_tokens=5)
    got = captioner.caption(images)
    assert captioner.kind == "blip-2" and len(got) == 3
    assert all(s and set(s.split()) <= set(WORDS) for s in got), got
    assert got == [captioner.caption([im])[0] for im in images]  # batching changes nothing
    prompted = Captioner.load(str(folder), "cpu", max_new_tokens=5, prompt="a picture of").caption(images)
    assert all(s.startswith("a picture of ") and set(s.split()) <= set(WORDS) for s in prompted), prompted


def test_a_tiny_florence2_captions_natively(tmp_path):
    import transformers

    assert hasattr(transformers, "Florence2ForConditionalGeneration")  # the installed transformers has it
    folder = build_tiny_florence2(tmp_path / "florence2")
    captioner = Captioner.load(str(folder), "cpu", max_new_tokens=5)
    assert captioner.kind == "florence2" and captioner.prompt == FLORENCE_TASK
    images = [Image.open(p) for p in sorted(pictures(tmp_path / "p").glob("*.png"))]
    got = captioner.caption(images)
    assert len(got) == 3 and all(s and set(s.split()) <= set(WORDS) for s in got), got  # not the task's words
    assert got == [captioner.caption([im])[0] for im in images]


def test_remote_code_florence2_and_a_transformers_without_it_are_refused(tmp_path, monkeypatch):
    remote = tmp_path / "Florence-2-base"  # microsoft/Florence-2-base's config: its own code
    remote.mkdir()
    (remote / "config.json").write_text('{"model_type": "florence2", "auto_map": {"AutoConfig": '
                                        '"configuration_florence2.Florence2Config"}}')
    with pytest.raises(CaptionerError, match="never runs a model's remote code.*florence-community"):
        Captioner.load(str(remote))
    native = build_tiny_florence2(tmp_path / "florence2")
    monkeypatch.setitem(MODEL_CLASSES, "florence2", "Florence2ForConditionalGenerationOfTheFuture")
    with pytest.raises(CaptionerError, match=r"has no Florence2ForConditionalGenerationOfTheFuture.*upgrade"):
        Captioner.load(str(native))


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

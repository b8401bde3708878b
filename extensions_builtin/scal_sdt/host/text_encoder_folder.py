"""What the WebUI (A1111 v1.8, offline) needs to build a text encoder whose size is not the stock one.

The WebUI builds text encoders from *names* in the checkpoint's yaml, never from the checkpoint:

* SD1 ``ldm...FrozenCLIPEmbedder`` / SDXL ``sgm...FrozenCLIPEmbedder`` call ``CLIPTokenizer.from_pretrained(version)``
  and ``CLIPTextModel.from_pretrained(version)`` (the weights then come from the checkpoint). For the stock
  ``openai/clip-vit-large-patch14`` that is the Hugging Face cache; for any other size :func:`write_clip_text_folder`
  writes a local folder — ``config.json`` (``model_type: clip_text_model`` + ``CLIPTextConfig`` fields, which
  transformers 4.30 up to 5.x read) and the CLIP BPE tokenizer files (``vocab.json``, ``merges.txt``,
  ``tokenizer_config.json``, ``special_tokens_map.json``) — whose absolute path the yaml names as ``version``.
  The vocabulary is open_clip's bundled ``bpe_simple_vocab_16e6.txt.gz`` (identical to OpenAI CLIP's), so the
  transformers tokenizer gives the ids of open_clip's ``SimpleTokenizer`` (and of our :mod:`.tokenizer`).
* SD2 ``ldm...FrozenOpenCLIPEmbedder`` / SDXL ``sgm...FrozenOpenCLIPEmbedder2`` call
  ``open_clip.create_model_and_transforms(arch)``, and ``arch`` must be a registered open_clip model config.
  :func:`write_open_clip_config` writes one (a JSON file whose stem is the config name) for a small tower; something
  must call ``open_clip.add_model_config(<that file>)`` before the model is built (see :mod:`.ldm_yaml`).

Nothing here imports open_clip or transformers: the BPE file is found with ``importlib.util.find_spec``.
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.util
import json
import os
from pathlib import Path

from ..files import atomic_write_text

STOCK_CLIP_L = "openai/clip-vit-large-patch14"
BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
VOCAB_SIZE = 49408
CONTEXT_LENGTH = 77
START, END = "<|startoftext|>", "<|endoftext|>"
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")
# CLIPTextConfig's own fields (transformers 4.30 … 5.x), the only ones written to config.json
CLIP_TEXT_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "projection_dim", "num_hidden_layers",
                    "num_attention_heads", "max_position_embeddings", "hidden_act", "layer_norm_eps",
                    "attention_dropout", "initializer_range", "initializer_factor", "pad_token_id", "bos_token_id",
                    "eos_token_id")
# OpenAI CLIP ViT-L/14's text tower, what the WebUI builds for "openai/clip-vit-large-patch14"
_STOCK_CLIP_L = dict(vocab_size=VOCAB_SIZE, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                     num_attention_heads=12, max_position_embeddings=CONTEXT_LENGTH, hidden_act="quick_gelu")


def bpe_path() -> Path:
    """open_clip's bundled BPE merges file (found without importing open_clip)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("open_clip is not installed; its BPE vocabulary file is needed for the CLIP tokenizer")
    for location in spec.submodule_search_locations:
        path = Path(location) / BPE_FILE
        if path.is_file():
            return path
    raise FileNotFoundError(f"{BPE_FILE} is not inside open_clip ({list(spec.submodule_search_locations)})")


def _bytes_to_unicode() -> dict[int, str]:
    """The byte -> printable character table of GPT-2/CLIP BPE."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


@functools.lru_cache(maxsize=1)
def clip_vocab_and_merges() -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    """The CLIP vocabulary (token -> id, 49,408 entries) and its BPE merges, built as open_clip's
    ``SimpleTokenizer`` builds them, with OpenAI's names for the start/end tokens (as transformers expects)."""
    lines = gzip.open(bpe_path()).read().decode("utf-8").split("\n")
    merges = tuple(tuple(line.split()) for line in lines[1:49152 - 256 - 2 + 1])
    byte_chars = list(_bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges] + [START, END]
    if len(vocab) != VOCAB_SIZE or any(len(m) != 2 for m in merges):
        raise ValueError(f"{bpe_path()} is not the CLIP BPE file ({len(vocab)} tokens, expected {VOCAB_SIZE})")
    return {token: i for i, token in enumerate(vocab)}, merges


def _write(path: Path, text: str) -> None:
    """Write atomically unless the content is already there; readable by all (a WebUI may run as another user)."""
    if not (path.is_file() and path.read_text(encoding="utf-8") == text):
        atomic_write_text(path, text)
        os.chmod(path, 0o644)


def _tokenizer_files() -> dict[str, str]:
    vocab, merges = clip_vocab_and_merges()
    end = {"content": END, "single_word": False, "lstrip": False, "rstrip": False, "normalized": True}
    start = dict(end, content=START)
    special = {"bos_token": start, "eos_token": end, "unk_token": end, "pad_token": END}
    config = {"unk_token": dict(end, __type="AddedToken"), "bos_token": dict(start, __type="AddedToken"),
              "eos_token": dict(end, __type="AddedToken"), "pad_token": END, "add_prefix_space": False,
              "errors": "replace", "do_lower_case": True, "model_max_length": CONTEXT_LENGTH,
              "tokenizer_class": "CLIPTokenizer"}
    return {"vocab.json": json.dumps(vocab, ensure_ascii=False),
            # transformers' CLIPTokenizer skips the first line, as open_clip skips the BPE file's header
            "merges.txt": "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
            "tokenizer_config.json": json.dumps(config, indent=2),
            "special_tokens_map.json": json.dumps(special, indent=2)}


def clip_text_config_dict(config) -> dict:
    """``config.json`` for a ``CLIPTextModel`` of this ``CLIPTextConfig`` (only fields transformers 4.30 knows)."""
    fields = {k: getattr(config, k) for k in CLIP_TEXT_FIELDS if getattr(config, k, None) is not None}
    return {"architectures": ["CLIPTextModel"], "model_type": "clip_text_model", **fields, "torch_dtype": "float32"}


def is_stock_clip_l(config) -> bool:
    """True when ``openai/clip-vit-large-patch14`` (what the WebUI builds by default) has this text tower's shape."""
    return all(getattr(config, k, None) == v for k, v in _STOCK_CLIP_L.items())


def write_clip_text_folder(config, folder) -> Path:
    """Write a transformers CLIP text folder (config + tokenizer, no weights) that ``CLIPTokenizer.from_pretrained``
    and ``CLIPTextModel``'s config loading accept offline; returns the folder (absolute)."""
    folder = Path(folder).absolute()
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{folder} exists and is not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    files = dict(_tokenizer_files(), **{"config.json": json.dumps(clip_text_config_dict(config), indent=2)})
    for name, text in files.items():
        _write(folder / name, text)
    return folder


# ------------------------------------------------------------------------------------------------- OpenCLIP
OPEN_CLIP_STOCK = {"ViT-H-14": dict(width=1024, heads=16, layers=24, embed_dim=1024),
                   "ViT-bigG-14": dict(width=1280, heads=20, layers=32, embed_dim=1280)}


def open_clip_model_config(config) -> dict:
    """An open_clip model config (``embed_dim``, ``vision_cfg``, ``text_cfg``) whose text tower is this
    ``CLIPTextConfig`` (gelu, the OpenCLIP layout). The vision tower is a minimal one: the WebUI deletes it."""
    if config.hidden_act != "gelu":
        raise ValueError(f"an OpenCLIP text tower uses gelu, not {config.hidden_act}")
    width = config.hidden_size
    text = dict(context_length=config.max_position_embeddings, vocab_size=config.vocab_size, width=width,
                heads=config.num_attention_heads, layers=config.num_hidden_layers)
    if config.intermediate_size != 4 * width:
        text["mlp_ratio"] = config.intermediate_size / width
    return {"embed_dim": config.projection_dim or width,
            "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16},  # 1 head of 64
            "text_cfg": text}


def open_clip_config_name(config) -> str:
    """A name for the config that its content decides (two checkpoints with the same tower share it safely)."""
    model = open_clip_model_config(config)
    digest = hashlib.sha256(json.dumps(model, sort_keys=True).encode()).hexdigest()[:8]
    t = model["text_cfg"]
    return f"scal_sdt-text-w{t['width']}-l{t['layers']}-h{t['heads']}-e{model['embed_dim']}-{digest}"


def stock_open_clip_arch(config) -> str | None:
    """``ViT-H-14`` / ``ViT-bigG-14`` when the text tower has that stock shape, else None."""
    for arch, shape in OPEN_CLIP_STOCK.items():
        if (config.hidden_size, config.num_attention_heads, config.num_hidden_layers) == (
                shape["width"], shape["heads"], shape["layers"]) and config.intermediate_size == 4 * shape["width"]:
            return arch
    return None


def write_open_clip_config(config, folder) -> tuple[str, Path]:
    """Write ``<folder>/<name>.json`` (an open_clip model config); ``open_clip.add_model_config(path)`` registers it
    as ``name``. Returns (name, absolute path)."""
    folder = Path(folder).absolute()
    folder.mkdir(parents=True, exist_ok=True)
    name = open_clip_config_name(config)
    path = folder / f"{name}.json"
    _write(path, json.dumps(open_clip_model_config(config), indent=2))
    return name, path


def read_open_clip_config(path) -> dict | None:
    """An open_clip model config JSON written by :func:`write_open_clip_config` (None when missing or not one)."""
    try:
        model = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ok = isinstance(model, dict) and all(k in model for k in ("embed_dim", "vision_cfg", "text_cfg"))
    return model if ok else None

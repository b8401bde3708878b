"""Embeddings stored inside images, the two ways the WebUI does it.

1. A PNG text chunk ``sd-ti-embedding``: base64 of a JSON document in which every tensor is written as
   ``{"TORCHTENSOR": nested list}``.
2. The same JSON, zlib-compressed and hidden in two pixel blocks glued to the left and right of the picture, each
   separated from it by one black column. Every byte is split into nibbles: the low nibbles go to the left block and
   the high nibbles to the right one, both filled row-major in ``(height, width, RGB)`` order. A nibble is XOR-ed
   with the low four bits of a fixed linear congruential stream (a=1664525, c=1013904223, m=2**32, seed 0, each
   output taken modulo 255) and stored in the low four bits of a channel; the high four bits are free decoration.
   A reader drops the outer rows and columns in which no pixel has all three channels non-zero, then takes the
   columns left of the first and right of the last column whose low nibbles are all zero.

Only plain data goes in and out here (dicts, lists, tensors); ``format.py`` gives it meaning.
"""
from __future__ import annotations

import base64
import json
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, PngImagePlugin

TEXT_KEY = "sd-ti-embedding"
META_KEY = "scal-sdt-embedding"  # our own chunk: name/step/checkpoint/meta; the WebUI ignores it
IMAGE_SUFFIXES = (".png", ".webp", ".jxl", ".avif")
_TENSOR_TAG = "TORCHTENSOR"


# ----------------------------------------------------------------------------------------------- JSON layer
def _tensor_to_json(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return {_TENSOR_TAG: obj.detach().cpu().tolist()}
    raise TypeError(f"cannot store a {type(obj).__name__} in an embedding image")


def _json_to_tensor(obj: dict) -> Any:
    if _TENSOR_TAG in obj:
        return torch.from_numpy(np.asarray(obj[_TENSOR_TAG], dtype=np.float64))
    return obj


def to_json(data: dict) -> str:
    return json.dumps(data, default=_tensor_to_json)


def from_json(text: str | bytes) -> Any:
    return json.loads(text, object_hook=_json_to_tensor)


def to_b64(data: dict) -> str:
    return base64.b64encode(to_json(data).encode("utf-8")).decode("ascii")


def from_b64(text: str | bytes) -> Any:
    return from_json(base64.b64decode(text, validate=False))


# ----------------------------------------------------------------------------------------------- the key stream
_A, _C, _MASK = 1664525, 1013904223, 0xFFFFFFFF
_BLOCK = 4096
_stream = np.zeros(0, dtype=np.uint8)


def _key_nibbles(n: int) -> np.ndarray:
    """The first ``n`` values of the stream, reduced to the four bits that are XOR-ed with the data."""
    global _stream
    if _stream.size < n:
        rows = -(-n // _BLOCK)
        first = np.empty(_BLOCK, dtype=np.uint64)
        state, jump_a, jump_c = 0, 1, 0
        for i in range(_BLOCK):
            state = (_A * state + _C) & _MASK
            first[i] = state
            jump_a, jump_c = (_A * jump_a) & _MASK, (_A * jump_c + _C) & _MASK
        states = np.empty((rows, _BLOCK), dtype=np.uint64)
        states[0] = first
        ja, jc = np.uint64(jump_a), np.uint64(jump_c)
        for r in range(1, rows):  # uint64 arithmetic wraps modulo 2**64, which keeps the low 32 bits right
            states[r] = (states[r - 1] * ja + jc) & np.uint64(_MASK)
        _stream = ((states.reshape(-1) % np.uint64(255)) & np.uint64(0x0F)).astype(np.uint8)
    return _stream[:n]


def _scramble(block: np.ndarray) -> np.ndarray:
    return block ^ _key_nibbles(block.size).reshape(block.shape)


# ----------------------------------------------------------------------------------------------- edge blocks
def _decoration(h: int, w: int, shades: np.ndarray) -> np.ndarray:
    """High-nibble pattern for a data block: diagonal bands whose brightness follows ``shades``."""
    ys, xs = np.mgrid[0:h, 0:w]
    pick = shades[(xs + ys // 4) % shades.size]
    return np.repeat(pick[:, :, None], 3, axis=2) & 0xF0


def _shades(data: dict) -> np.ndarray:
    first = next((v for v in _walk_tensors(data)), None)
    if first is None or first.numel() == 0:
        return np.array([128], dtype=np.uint8)
    vals = np.nan_to_num(np.abs(first.detach().reshape(-1)[:1024].double().numpy()), posinf=0.0)
    top = vals.max()
    return (vals / top * 255).astype(np.uint8) if top > 0 else np.zeros(vals.size, dtype=np.uint8)


def _walk_tensors(obj: Any):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _walk_tensors(v)


def hide_in_edges(image: Image.Image, data: dict) -> Image.Image:
    """Return a wider copy of ``image`` with ``data`` hidden in blocks left and right of it."""
    image = image.convert("RGB")
    raw = np.frombuffer(zlib.compress(to_json(data).encode("utf-8"), 9), dtype=np.uint8)
    h = image.height
    cols = -(-raw.size // (3 * h))
    padded = np.zeros(cols * 3 * h, dtype=np.uint8)
    padded[: raw.size] = raw
    shades = _shades(data)
    low = _scramble((padded & 0x0F).reshape(h, cols, 3)) | _decoration(h, cols, shades)
    high = _scramble((padded >> 4).reshape(h, cols, 3)) | _decoration(h, cols, shades[::-1])
    out = Image.new("RGB", (cols + 1 + image.width + 1 + cols, h), (0, 0, 0))
    out.paste(Image.fromarray(low.astype(np.uint8), "RGB"), (0, 0))
    out.paste(image, (cols + 1, 0))
    out.paste(Image.fromarray(high.astype(np.uint8), "RGB"), (cols + 1 + image.width + 1, 0))
    return out


def _trim_dark_border(px: np.ndarray) -> np.ndarray:
    lit = (px > 0).all(axis=2)
    cols, rows = np.flatnonzero(lit.any(axis=0)), np.flatnonzero(lit.any(axis=1))
    if cols.size == 0:  # nothing lit at all: the reader keeps the whole picture
        return px
    return px[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def edge_payload(image: Image.Image) -> bytes | None:
    """The decompressed JSON hidden in the image edges, or None if the image has no such blocks."""
    px = _trim_dark_border(np.asarray(image.convert("RGB"), dtype=np.uint8)) & 0x0F
    empty = np.flatnonzero(px.sum(axis=(0, 2)) == 0)
    if empty.size < 2:
        return None
    low, high = px[:, : empty[0]], px[:, empty[-1] + 1 :]
    if low.shape != high.shape or low.size == 0:
        raise ValueError(f"the data blocks in the image edges differ in size ({low.shape} vs {high.shape})")
    packed = (_scramble(high) << 4) | _scramble(low)
    try:
        return zlib.decompress(packed.astype(np.uint8).tobytes())
    except zlib.error as exc:
        raise ValueError(f"the data in the image edges is damaged ({exc})") from None


# ----------------------------------------------------------------------------------------------- files
def plain_card(title: str, lines: list[str], size: tuple[int, int] = (256, 256)) -> Image.Image:
    """A simple picture to carry an embedding when no preview image is given."""
    img = Image.new("RGB", size, (46, 58, 86))
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    draw.rectangle((6, 6, size[0] - 7, size[1] - 7), outline=(150, 170, 210), width=2)
    draw.text((16, 16), title, fill=(240, 240, 250), font=font)
    for i, line in enumerate(lines):
        draw.text((16, size[1] - 24 - 16 * (len(lines) - 1 - i)), line, fill=(200, 210, 230), font=font)
    return img


def write_png(path: str | Path, data: dict, image: Image.Image, side_meta: dict, edge_data: bool = True) -> None:
    """Write ``image`` as PNG carrying ``data`` in the text chunk and (if it decodes back) in its edges."""
    image = image.convert("RGB")
    if edge_data:
        hidden = hide_in_edges(image, data)
        try:
            ok = edge_payload(hidden) == to_json(data).encode("utf-8")
        except ValueError:
            ok = False
        if ok:  # an unlucky picture could defeat the reader's border trimming; the text chunk still holds the data
            image = hidden
    info = PngImagePlugin.PngInfo()
    info.add_text(TEXT_KEY, to_b64(data))
    info.add_text(META_KEY, json.dumps(side_meta))
    image.save(path, format="PNG", pnginfo=info)


def read_image(path: str | Path) -> tuple[Any, dict]:
    """(embedding data or None, our side metadata) from an image file; the text chunk wins over the edges."""
    with Image.open(path) as im:
        im.load()
        text = dict(getattr(im, "text", None) or {})
        side: dict = {}
        if META_KEY in text:
            try:
                loaded = json.loads(text[META_KEY])
                side = loaded if isinstance(loaded, dict) else {}
            except ValueError:
                side = {}
        if TEXT_KEY in text:
            try:
                return from_b64(text[TEXT_KEY]), side
            except ValueError as exc:
                raise ValueError(f"its '{TEXT_KEY}' text chunk is not valid base64 JSON ({exc})") from None
        payload = edge_payload(im)
    if payload is None:
        return None, side
    try:
        return from_json(payload), side
    except ValueError as exc:
        raise ValueError(f"the data in the image edges is not valid JSON ({exc})") from None

"""The CLIP BPE tokenizer (49,408 tokens; the vocabulary file ships inside open_clip)."""
from __future__ import annotations

import functools

from .families import BOS_ID, EOS_ID

CHUNK_TOKENS = 75  # tokens per 77-token window, without the start and end tokens


class ClipTokenizer:
    """Text → token ids, without start/end tokens. Identical for CLIP-L, OpenCLIP-H and OpenCLIP-bigG."""

    bos_id = BOS_ID
    eos_id = EOS_ID

    def __init__(self):
        from open_clip.tokenizer import SimpleTokenizer  # the BPE file is package data of open_clip

        self._bpe = SimpleTokenizer()
        self.vocab_size = len(self._bpe.encoder)

    @functools.lru_cache(maxsize=4096)
    def _encode(self, text: str) -> tuple[int, ...]:
        return tuple(self._bpe.encode(text))

    def encode(self, text: str) -> list[int]:
        return list(self._encode(text))

    def decode(self, ids: list[int]) -> str:
        return self._bpe.decode(ids)


@functools.lru_cache(maxsize=1)
def clip_tokenizer() -> ClipTokenizer:
    return ClipTokenizer()

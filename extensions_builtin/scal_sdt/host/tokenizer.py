"""The CLIP BPE tokenizer (49,408 tokens; the vocabulary file ships inside open_clip)."""
from __future__ import annotations

import functools

import torch

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


CONTEXT = 77


def clip_token_ids(texts: list[str], pad_id: int = EOS_ID) -> torch.Tensor:
    """[start] text [end] padded to 77 (with the end token as CLIP-L pads, or 0 as OpenCLIP does): [B, 77] ids."""
    tok = clip_tokenizer()
    out = torch.full((len(texts), CONTEXT), pad_id, dtype=torch.long)
    for i, text in enumerate(texts):
        ids = [BOS_ID] + tok.encode(text)[:CONTEXT - 2] + [EOS_ID]
        out[i, :len(ids)] = torch.tensor(ids)
    return out

"""Prompt text → 77-token windows, with embedding names replaced by their vectors.

As in the WebUI: a prompt is split into windows of 75 tokens (plus start and end token); an embedding's vectors
never straddle two windows; all prompts of a batch get the same number of windows; the conditioning of a prompt
is its windows' outputs concatenated along the token axis.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from .tokenizer import CHUNK_TOKENS, ClipTokenizer

FILLER_ID = 265  # the '*' token; fills the slots that an embedding's vectors replace


@dataclass
class Slot:
    """Positions ``window*77 + pos .. + n`` of prompt ``row`` take the vectors of embedding ``name``."""

    row: int
    window: int
    pos: int
    name: str


@dataclass
class TokenizedBatch:
    ids: torch.Tensor  # [B, windows, 77] (start, 75 tokens, end, padded with the encoder's pad id later)
    lengths: list[list[int]]  # tokens used in each window (without start/end), per prompt
    slots: list[Slot]

    @property
    def windows(self) -> int:
        return self.ids.shape[1]


def _name_pattern(names: list[str]) -> re.Pattern | None:
    if not names:
        return None
    alternatives = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
    return re.compile(rf"(?<![\w-])({alternatives})(?![\w-])")


def tokenize(prompts: list[str], tokenizer: ClipTokenizer, vectors_per_name: dict[str, int]) -> TokenizedBatch:
    """Tokenize prompts; every occurrence of an embedding name becomes that many filler slots."""
    pattern = _name_pattern(list(vectors_per_name))
    per_prompt: list[list[list[int]]] = []
    slots: list[Slot] = []
    for row, text in enumerate(prompts):
        windows: list[list[int]] = [[]]
        pieces = pattern.split(text) if pattern else [text]
        for i, piece in enumerate(pieces):
            is_name = pattern is not None and i % 2 == 1
            if not is_name:
                for tok in tokenizer.encode(piece):
                    if len(windows[-1]) == CHUNK_TOKENS:
                        windows.append([])
                    windows[-1].append(tok)
                continue
            n = vectors_per_name[piece]
            if n > CHUNK_TOKENS:
                raise ValueError(f"embedding {piece!r} has {n} vectors; at most {CHUNK_TOKENS} fit in a prompt window")
            if len(windows[-1]) + n > CHUNK_TOKENS:
                windows.append([])
            slots.append(Slot(row, len(windows) - 1, 1 + len(windows[-1]), piece))
            windows[-1].extend([FILLER_ID] * n)
        per_prompt.append(windows)
    count = max(len(w) for w in per_prompt)
    ids = torch.full((len(prompts), count, CHUNK_TOKENS + 2), -1, dtype=torch.long)
    lengths = []
    for row, windows in enumerate(per_prompt):
        windows = windows + [[] for _ in range(count - len(windows))]
        lengths.append([len(w) for w in windows])
        for k, w in enumerate(windows):
            ids[row, k, 0] = tokenizer.bos_id
            ids[row, k, 1:1 + len(w)] = torch.tensor(w, dtype=torch.long)
            ids[row, k, 1 + len(w)] = tokenizer.eos_id
    return TokenizedBatch(ids=ids, lengths=lengths, slots=slots)


def with_padding(ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    return torch.where(ids < 0, torch.full_like(ids, pad_id), ids)


def _unwrapped_keys(module, state_dict, prefix, local_metadata):
    for key in [k for k in state_dict if k.startswith(prefix + "wrapped.")]:
        state_dict[prefix + key[len(prefix) + len("wrapped."):]] = state_dict.pop(key)


def _wrapped_keys(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
    for key in [k for k in state_dict if k.startswith(prefix) and not k.startswith(prefix + "wrapped.")]:
        state_dict[prefix + "wrapped." + key[len(prefix):]] = state_dict.pop(key)


class PlaceholderEmbedding(nn.Module):
    """Wraps a text encoder's token-embedding table; splices embedding vectors into the looked-up rows.

    The table itself stays frozen: gradients reach only the spliced vectors (as the WebUI's EmbeddingsWithFixes).
    """

    def __init__(self, wrapped: nn.Embedding):
        super().__init__()
        self.wrapped = wrapped
        self.pending: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # rows, cols, values
        # the state dict is the table's own (``…token_embedding.weight``), so a wrapped model saves and loads as one
        self._register_state_dict_hook(_unwrapped_keys)
        self._register_load_state_dict_pre_hook(_wrapped_keys)

    @property
    def weight(self) -> torch.Tensor:
        return self.wrapped.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.wrapped(ids)
        if self.pending is not None:
            rows, cols, values = self.pending
            x = x.index_put((rows.to(x.device), cols.to(x.device)), values.to(device=x.device, dtype=x.dtype))
        return x


def splice_plan(batch: TokenizedBatch, vectors: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """Rows/cols in the flattened [B*windows, 77] id tensor and the vectors that go there."""
    if not batch.slots:
        return None
    rows, cols, values = [], [], []
    for slot in batch.slots:
        vec = vectors[slot.name]
        n = vec.shape[0]
        flat_row = slot.row * batch.windows + slot.window
        rows.append(torch.full((n,), flat_row, dtype=torch.long))
        cols.append(torch.arange(slot.pos, slot.pos + n, dtype=torch.long))
        values.append(vec)
    return torch.cat(rows), torch.cat(cols), torch.cat(values)

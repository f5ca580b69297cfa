"""A tiny frozen text encoder for the toy vocabulary (stands in for T5 and CLIP-L text).

Random and frozen (seeded, never trained): word embeddings drawn from N(0, 1) plus
fixed sinusoidal positions. `last_hidden_state` (the T5 role: FLUX's token sequence)
is word + position per token, zeros at padding; `pooler_output` (the CLIP-L role:
FLUX's `vec` and RefComp's instance captions) is the mean word embedding. The call
surface mirrors transformers (tokenizer(...).input_ids, model(ids).last_hidden_state /
.pooler_output, config.hidden_size / max_position_embeddings), so FLUX-side code runs
unchanged.

Axis letters: b batch, L tokens, D width.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
from torch import nn

from .vocab import VOCAB

PAD, UNK = 0, 1


@dataclass(frozen=True)
class ToyTextConfig:
    vocab_size: int = len(VOCAB)
    hidden_size: int = 64
    max_position_embeddings: int = 48
    position_scale: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.hidden_size % 2 or self.hidden_size <= 0:
            raise ValueError(f"ToyTextConfig.hidden_size must be a positive even int, got {self.hidden_size}")


@dataclass(frozen=True)
class Tokens:
    input_ids: torch.Tensor          # (b, L) long
    attention_mask: torch.Tensor     # (b, L) long


@dataclass(frozen=True)
class TextOutput:
    last_hidden_state: torch.Tensor  # (b, L, D)
    pooler_output: torch.Tensor      # (b, D)


class ToyTokenizer:
    """Word-level tokenizer over `VOCAB`; unknown words map to <unk>."""

    def __init__(self, model_max_length: int = 48) -> None:
        self.model_max_length = model_max_length
        self.index = {w: i for i, w in enumerate(VOCAB)}

    def words(self, text: str) -> list[int]:
        return [self.index.get(w, UNK) for w in re.findall(r"[a-z]+", text.lower())]

    def __call__(self, texts: str | list[str], padding: str | bool = "max_length", max_length: int | None = None,
                 truncation: bool = True, return_tensors: str = "pt") -> Tokens:
        texts = [texts] if isinstance(texts, str) else list(texts)
        ids = [self.words(t) for t in texts]
        length = max_length or (self.model_max_length if padding == "max_length" else max(map(len, ids), default=1))
        if truncation:
            ids = [i[:length] for i in ids]
        out = torch.full((len(ids), max(length, max(map(len, ids), default=0))), PAD, dtype=torch.long)
        for row, i in enumerate(ids):
            out[row, :len(i)] = torch.tensor(i, dtype=torch.long)
        return Tokens(input_ids=out, attention_mask=(out != PAD).long())


def sinusoid(length: int, dim: int) -> torch.Tensor:
    """Fixed position table (L, D)."""
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(-math.log(10000.0) * torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)
    return table


class ToyTextEncoder(nn.Module):
    """Frozen random word embeddings + sinusoidal positions."""

    def __init__(self, config: ToyTextConfig | None = None) -> None:
        super().__init__()
        self.config = config or ToyTextConfig()
        g = torch.Generator().manual_seed(self.config.seed)
        table = torch.randn(self.config.vocab_size, self.config.hidden_size, generator=g)
        table[PAD] = 0.0
        self.embed = nn.Embedding(self.config.vocab_size, self.config.hidden_size, padding_idx=PAD)
        with torch.no_grad():
            self.embed.weight.copy_(table)
        self.register_buffer("positions", sinusoid(self.config.max_position_embeddings, self.config.hidden_size),
                             persistent=False)
        self.requires_grad_(False)

    def forward(self, input_ids: torch.Tensor) -> TextOutput:
        """input_ids (b, L) -> last_hidden_state (b, L, D), pooler_output (b, D)"""
        if input_ids.shape[1] > self.config.max_position_embeddings:
            raise ValueError(f"toy text encoder: {input_ids.shape[1]} tokens, more than max_position_embeddings="
                             f"{self.config.max_position_embeddings}; lower data.max_text_len")
        words = self.embed(input_ids)                                                   # (b, L, D)
        real = (input_ids != PAD).to(words.dtype)[..., None]                           # (b, L, 1)
        pos = self.positions[: input_ids.shape[1]].to(words.dtype)[None]               # (1, L, D)
        seq = (words + self.config.position_scale * pos) * real
        pooled = words.sum(dim=1) / real.sum(dim=1).clamp(min=1.0)
        return TextOutput(last_hidden_state=seq, pooler_output=pooled)

    def encode(self, tokenizer: ToyTokenizer, texts: list[str], max_length: int | None = None) -> TextOutput:
        """Convenience: tokenize + forward on this module's device."""
        ids = tokenizer(texts, max_length=max_length or self.config.max_position_embeddings).input_ids
        return self(ids.to(self.embed.weight.device))

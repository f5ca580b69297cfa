"""T5 span binding: which prompt tokens carry which reference's offsets (WEIGHTS_COMPAT §2.4).

Pure functions on token-id lists; the host passes its T5 tokenizer in as `tokenize(text) ->
(input_ids, attention_mask)`, padded or truncated to exactly `length` (128) tokens, the same ids as
the original (T5TokenizerFast: pad 0, EOS 1, "▁" alone = 3).

For reference i with caption c (e.g. "a man"):
- the word is c without a leading "a " / "A ";
- its ids: tokenized alone, padding and the trailing EOS dropped, then a leading 3 dropped;
- the caption's and the prompt's ids: padding and the trailing EOS dropped;
- the first exact occurrence of the word ids in the caption ids gives the caption span, in the prompt
  ids the prompt span. The offsets of caption tokens [cs, ce) go to prompt tokens [ps, pe).

Axis letters: L prompt / caption tokens (128), N references, K offset blocks, D out_dim.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ..errors import RefCompError

log = logging.getLogger(__name__)

T5_LENGTH = 128             # XVerse's max_text_len: captions and the prompt are tokenized at exactly this length
T5_SPACE_ID = 3             # SentencePiece "▁" on its own, dropped from the front of a word's ids

Tokenize = Callable[[str], tuple[Sequence[int], Sequence[int]]]


class SpanNotFoundError(RefCompError):
    """A reference's caption word is not in the prompt (XVerse would produce NaN); names the word.
    `where`: "prompt" (not in the prompt), "caption" (not in its own caption) or "word" (no tokens)."""

    def __init__(self, message: str, *, reference: int, word: str, where: str = "prompt") -> None:
        super().__init__(message)
        self.reference = reference
        self.word = word
        self.where = where


@dataclass(frozen=True)
class Span:
    """Reference `reference` (0-based): its word's tokens [caption) in its caption, [prompt) in the prompt."""

    reference: int
    word: str
    caption: tuple[int, int]
    prompt: tuple[int, int]


@dataclass(frozen=True)
class SpanBinding:
    """Per-prompt arrays of the binding.

    ref_index, src_index: (L,) long; prompt token t takes the offsets of caption token src_index[t] of
    reference ref_index[t] (-1 on unbound tokens). delta_mask: (L,) bool. text_cond_mask: (L, N) bool,
    True where prompt token t is in reference n's span (used by the single-block masks).
    """

    spans: tuple[Span, ...]
    ref_index: torch.Tensor
    src_index: torch.Tensor
    delta_mask: torch.Tensor
    text_cond_mask: torch.Tensor

    def gather(self, shared: torch.Tensor, per_block: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """shared: (N, L, D), per_block: (N, L, K, D) offsets of every reference ->
        (L, D) and (L, K, D) for the prompt, zero on unbound tokens."""
        n = self.text_cond_mask.shape[1]
        if shared.shape[0] != n or per_block.shape[0] != n:
            raise ValueError(f"SpanBinding.gather: offsets for {shared.shape[0]} / {per_block.shape[0]} references, "
                             f"the binding has {n}")
        ref, src = self.ref_index.clamp(min=0).to(shared.device), self.src_index.clamp(min=0).to(shared.device)
        keep = self.delta_mask.to(shared.device)
        delta = torch.where(keep[:, None], shared[ref, src], shared.new_zeros(()))               # (L, D)
        delta_block = torch.where(keep[:, None, None], per_block[ref, src], per_block.new_zeros(()))  # (L, K, D)
        return delta, delta_block


def target_word(caption: str) -> str:
    """The word a caption binds: the caption without a leading 'a ' or 'A '."""
    return caption[2:] if caption.startswith(("a ", "A ")) else caption


def fill_entities(prompt: str, captions: Sequence[str]) -> str:
    """Replace ENT1, ENT2, ... in the prompt by the full captions of references 1, 2, ..."""
    def swap(match: re.Match) -> str:
        i = int(match.group(1))
        if not 1 <= i <= len(captions):
            raise ValueError(f"prompt: {match.group(0)} names reference {i}, but there are {len(captions)} "
                             f"references; use ENT1 .. ENT{len(captions)} or write the captions into the prompt")
        return captions[i - 1]
    return re.sub(r"ENT(\d+)", swap, prompt)


def content_ids(ids: Sequence[int], mask: Sequence[int] | None = None) -> list[int]:
    """Tokens under the attention mask (all when None), without the trailing EOS."""
    ids = [int(i) for i in ids]
    if mask is not None:
        if len(mask) != len(ids):
            raise ValueError(f"token ids ({len(ids)}) and attention mask ({len(mask)}) differ in length")
        ids = [i for i, m in zip(ids, mask) if m]
    return ids[:-1]


def word_ids(ids: Sequence[int], mask: Sequence[int] | None = None) -> list[int]:
    """The ids of a word tokenized alone: `content_ids` without a leading "▁" (3)."""
    out = content_ids(ids, mask)
    return out[1:] if out[:1] == [T5_SPACE_ID] else out


def find_span(ids: Sequence[int], word: Sequence[int]) -> tuple[int, int] | None:
    """[start, end) of the first exact occurrence of `word` in `ids`, or None."""
    ids, word = list(ids), list(word)
    if not word:
        raise ValueError("find_span: the word has no tokens")
    for start in range(len(ids) - len(word) + 1):
        if ids[start:start + len(word)] == word:
            return start, start + len(word)
    return None


def bind_ids(prompt: Sequence[int], captions: Sequence[Sequence[int]], words: Sequence[Sequence[int]], *,
             length: int = T5_LENGTH, names: Sequence[str] | None = None, prompt_text: str | None = None,
             caption_texts: Sequence[str] | None = None) -> SpanBinding:
    """The binding from ids: prompt and captions as `content_ids`, words as `word_ids`.

    Later references overwrite earlier ones on shared prompt tokens (as the original); both keep their
    `text_cond_mask` column. Raises SpanNotFoundError naming the word when it is in the caption or the
    prompt nowhere. `names`, `prompt_text`, `caption_texts` only make the messages readable.
    """
    if len(captions) != len(words):
        raise ValueError(f"bind_ids: {len(captions)} captions but {len(words)} words")
    n = len(words)
    names = list(names) if names is not None else [str(list(w)) for w in words]
    ref_index = torch.full((length,), -1, dtype=torch.long)
    src_index = torch.full((length,), -1, dtype=torch.long)
    text_cond_mask = torch.zeros(length, n, dtype=torch.bool)
    spans = []
    for i, (caption, word) in enumerate(zip(captions, words)):
        if not word:
            raise SpanNotFoundError(f"reference {i + 1}: its caption word {names[i]!r} has no T5 tokens; give the "
                                    "reference a caption with a word", reference=i, word=names[i], where="word")
        src = find_span(caption, word)
        if src is None:
            where = f" {caption_texts[i]!r}" if caption_texts else ""
            raise SpanNotFoundError(f"reference {i + 1}: the word {names[i]!r} is not found in its own caption{where} "
                                    "as the same T5 tokens; use a caption of the form 'a <word>'", reference=i,
                                    word=names[i], where="caption")
        tar = find_span(prompt, word)
        if tar is None:
            where = f" {prompt_text!r}" if prompt_text is not None else ""
            raise SpanNotFoundError(f"reference {i + 1}: its caption word {names[i]!r} does not appear in the "
                                    f"prompt{where} (within its first {length} T5 tokens); write {names[i]!r} into "
                                    "the prompt verbatim, e.g. with ENT1, ENT2 ... standing for the captions",
                                    reference=i, word=names[i])
        overlap = ref_index[tar[0]:tar[1]]
        if (overlap >= 0).any():
            log.warning("references %s and %d bind the same prompt tokens (%r); reference %d's offsets are used "
                        "there", sorted({int(r) + 1 for r in overlap if r >= 0}), i + 1, names[i], i + 1)
        ref_index[tar[0]:tar[1]] = i
        src_index[tar[0]:tar[1]] = torch.arange(src[0], src[1])
        text_cond_mask[tar[0]:tar[1], i] = True
        spans.append(Span(reference=i, word=names[i], caption=src, prompt=tar))
    return SpanBinding(spans=tuple(spans), ref_index=ref_index, src_index=src_index, delta_mask=ref_index >= 0,
                       text_cond_mask=text_cond_mask)


def bind_spans(prompt: str, captions: Sequence[str], tokenize: Tokenize, *, length: int = T5_LENGTH) -> SpanBinding:
    """The binding of references with these captions to a prompt (ENT<i> already filled in)."""
    words = [target_word(c) for c in captions]

    def tokens(text: str) -> tuple[Sequence[int], Sequence[int]]:
        ids, mask = tokenize(text)
        if len(ids) != length:
            raise ValueError(f"the T5 tokenizer gave {len(ids)} tokens for {text!r}; XVerse tokenizes at exactly "
                             f"{length} (padding='max_length', truncation=True)")
        return ids, mask

    return bind_ids(content_ids(*tokens(prompt)), [content_ids(*tokens(c)) for c in captions],
                    [word_ids(*tokens(w)) for w in words], length=length, names=words, prompt_text=prompt,
                    caption_texts=captions)

"""T5 span binding (WEIGHTS_COMPAT §2.4) with a real (tiny-vocabulary) SentencePiece T5 tokenizer, and
with the real T5-XXL tokenizer when a ComfyUI tree is at hand."""
from __future__ import annotations

import logging
import os
import string
from pathlib import Path

import pytest
import torch

from refcomp_core.xverse import SpanNotFoundError, bind_ids, bind_spans, fill_entities, target_word
from refcomp_core.xverse.spans import content_ids, find_span, word_ids

LENGTH = 128


@pytest.fixture(scope="module")
def t5():
    """A unigram T5 tokenizer: pad 0, EOS 1, unk 2, "▁" 3. Whole-word pieces for a few words; "ham" +
    "ster" without a "▁ham" piece, so "hamster" alone is [3, ham, ster] as in the real T5."""
    from transformers import T5Tokenizer

    words = ["a", "man", "woman", "cat", "and", "wearing", "tiny", "hat", "in", "the", "park", "an"]
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0), ("ham", -1.0), ("ster", -1.0),
              ("(", -2.0), (")", -2.0)]
    pieces += [(f"\u2581{w}", -1.0) for w in words]
    pieces += [(c, -3.0) for c in string.ascii_lowercase] + [(f"\u2581{c}", -2.5) for c in string.ascii_lowercase]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=LENGTH)


def _tokenize(tokenizer, length=LENGTH):
    def run(text):
        enc = tokenizer(text, padding="max_length", max_length=length, truncation=True)
        return enc["input_ids"], enc["attention_mask"]
    return run


def _ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_target_word_strips_only_a_leading_article() -> None:
    assert target_word("a man") == "man" and target_word("A hamster") == "hamster"
    assert target_word("an owl") == "an owl" and target_word("man") == "man" and target_word("a  cat") == " cat"
    assert fill_entities("ENT1 and ENT2 in the park", ["a man", "a cat"]) == "a man and a cat in the park"
    with pytest.raises(ValueError, match="ENT3 names reference 3, but there are 2 references"):
        fill_entities("ENT3 waves", ["a man", "a cat"])


def test_id_helpers() -> None:
    assert content_ids([7, 8, 1, 0, 0], [1, 1, 1, 0, 0]) == [7, 8]
    assert word_ids([3, 9, 10, 1, 0], [1, 1, 1, 1, 0]) == [9, 10] and word_ids([5, 3, 1], None) == [5, 3]
    assert find_span([4, 3, 9, 10, 5, 9, 10], [9, 10]) == (2, 4)
    assert find_span([4, 3, 9], [9, 10]) is None
    with pytest.raises(ValueError, match="no tokens"):
        find_span([1, 2], [])


def test_binding_arrays(t5) -> None:
    prompt, captions = "a man and a woman in the park", ["a woman", "a man"]
    bound = bind_spans(prompt, captions, _tokenize(t5))
    p = _ids(t5, prompt)
    man, woman = p.index(_ids(t5, " man")[0]), p.index(_ids(t5, " woman")[0])
    assert [s.word for s in bound.spans] == ["woman", "man"]
    assert bound.spans[0].prompt == (woman, woman + 1) and bound.spans[1].prompt == (man, man + 1)
    assert bound.spans[0].caption == (1, 2) and bound.spans[1].caption == (1, 2)
    want_mask = torch.zeros(LENGTH, dtype=torch.bool)
    want_mask[[man, woman]] = True
    assert torch.equal(bound.delta_mask, want_mask)
    assert bound.text_cond_mask.shape == (LENGTH, 2)
    assert bound.text_cond_mask[woman, 0] and bound.text_cond_mask[man, 1]
    assert bound.text_cond_mask.sum() == 2
    assert bound.ref_index[woman] == 0 and bound.ref_index[man] == 1 and bound.src_index[man] == 1
    assert (bound.ref_index[~want_mask] == -1).all()


def test_gather_places_caption_offsets_on_prompt_tokens(t5) -> None:
    bound = bind_spans("a cat and a hamster", ["a hamster", "a cat"], _tokenize(t5))
    shared, per_block = torch.randn(2, LENGTH, 6), torch.randn(2, LENGTH, 3, 6)
    delta, delta_block = bound.gather(shared, per_block)
    assert delta.shape == (LENGTH, 6) and delta_block.shape == (LENGTH, 3, 6)
    want, want_block = torch.zeros(LENGTH, 6), torch.zeros(LENGTH, 3, 6)
    for span in bound.spans:                              # explicit per-token copy
        for j in range(span.prompt[1] - span.prompt[0]):
            want[span.prompt[0] + j] = shared[span.reference, span.caption[0] + j]
            want_block[span.prompt[0] + j] = per_block[span.reference, span.caption[0] + j]
    assert torch.equal(delta, want) and torch.equal(delta_block, want_block)
    assert delta.abs().sum() > 0 and bound.spans[0].prompt[1] - bound.spans[0].prompt[0] == 2    # ham + ster
    with pytest.raises(ValueError, match="offsets for 1 / 1 references, the binding has 2"):
        bound.gather(shared[:1], per_block[:1])


def test_leading_space_piece_is_dropped_from_the_word(t5) -> None:
    """'hamster' alone is [3, ham, ster]; in '(hamster)' no '▁' precedes it, so only the stripped ids match."""
    tokenize = _tokenize(t5)
    assert _ids(t5, "hamster")[0] == 3
    bound = bind_spans("a cat (hamster)", ["a hamster"], tokenize)
    p = _ids(t5, "a cat (hamster)")
    start = p.index(_ids(t5, "hamster")[1])
    assert bound.spans[0].prompt == (start, start + 2) and p[start - 1] != 3


def test_a_word_of_several_ids_and_the_first_occurrence(t5) -> None:
    bound = bind_spans("a hamster and a hamster", ["a hamster"], _tokenize(t5))
    p = _ids(t5, "a hamster and a hamster")
    start = p.index(_ids(t5, "hamster")[1])
    assert bound.spans[0].prompt == (start, start + 2) and bound.delta_mask.sum() == 2


def test_an_article_other_than_a_stays_in_the_word(t5) -> None:
    bound = bind_spans("an owl and a cat", ["an owl"], _tokenize(t5))
    assert bound.spans[0].word == "an owl" and bound.spans[0].prompt[0] == 0
    with pytest.raises(SpanNotFoundError, match="'an owl' does not appear in the prompt 'a owl and a cat'"):
        bind_spans("a owl and a cat", ["an owl"], _tokenize(t5))


def test_a_word_missing_from_the_prompt_is_refused_by_name(t5) -> None:
    with pytest.raises(SpanNotFoundError) as err:
        bind_spans("a man in the park", ["a man", "a cat"], _tokenize(t5))
    assert err.value.reference == 1 and err.value.word == "cat"
    assert "reference 2: its caption word 'cat' does not appear in the prompt 'a man in the park'" in str(err.value)


def test_a_word_past_the_token_limit_is_not_found(t5) -> None:
    prompt = "a man " + "in the park " * 10 + "a cat"
    with pytest.raises(SpanNotFoundError, match="within its first 16 T5 tokens"):
        bind_spans(prompt, ["a cat"], _tokenize(t5, 16), length=16)
    assert bind_spans(prompt, ["a cat"], _tokenize(t5)).spans[0].prompt[0] > 16


def test_two_references_on_the_same_word_warn_and_the_later_wins(t5, caplog) -> None:
    caplog.set_level(logging.WARNING)
    bound = bind_spans("a man and a cat", ["a man", "a man"], _tokenize(t5))
    assert bound.spans[0].prompt == bound.spans[1].prompt
    start = bound.spans[0].prompt[0]
    assert bound.ref_index[start] == 1 and bound.text_cond_mask[start].tolist() == [True, True]
    assert "references [1] and 2 bind the same prompt tokens" in caplog.text


def test_bad_tokenizer_length_and_empty_words(t5) -> None:
    with pytest.raises(ValueError, match="gave 64 tokens .* exactly 128"):
        bind_spans("a man", ["a man"], _tokenize(t5, 64))
    with pytest.raises(SpanNotFoundError, match="has no T5 tokens"):
        bind_spans("a man", ["a "], _tokenize(t5))
    with pytest.raises(SpanNotFoundError, match="reference 1: the word 'x' is not found in its own caption"):
        bind_ids([5, 6], [[7, 8]], [[9]], length=8, names=["x"])


def _real_t5_tokenizer():
    root = os.environ.get("COMFYUI_PATH")
    path = Path(root or "") / "comfy" / "text_encoders" / "t5_tokenizer" / "tokenizer.json"
    if not root or not path.is_file():
        pytest.skip("COMFYUI_PATH is not set (or has no T5 tokenizer.json): the real T5-XXL tokenizer case is "
                    "skipped; the tiny SentencePiece tokenizer cases above still run")
    from transformers import T5TokenizerFast
    return T5TokenizerFast(tokenizer_file=str(path))


def test_the_readme_example_with_the_real_t5_tokenizer() -> None:
    """'ENT1 wearing a tiny hat' with 'a hamster': hamster = [▁, ham, ster] alone, found as [ham, ster]."""
    t5 = _real_t5_tokenizer()
    prompt = fill_entities("ENT1 wearing a tiny hat", ["a hamster"])
    bound = bind_spans(prompt, ["a hamster"], _tokenize(t5))
    ids = t5(prompt)["input_ids"]
    s, e = bound.spans[0].prompt
    assert t5.decode(ids[s:e]) == "hamster" and e - s == 2 and ids[s - 1] == 3
    assert bound.spans[0].caption == (s, e)                   # the caption is the prompt's first words here
    with pytest.raises(SpanNotFoundError, match="'dog'"):       # '(dog)' is ▁( dog ): not the ids of 'dog' alone
        bind_spans("a photo of (dog)", ["a dog"], _tokenize(t5))

"""Hypothesis strategies for hostile input: JSON values of every kind, numbers at the
float limits, broken text, deep nesting, and valid layouts to mutate one field at a time.

`accepted_or_ours(fn, error, place)` is the one property every parser and loader must
have: it returns a valid object, or raises the pack's own `error` whose message starts
with (or names) `place` and fits on one line. Anything else fails the test.
"""
from __future__ import annotations

import math
import struct
import sys
import zlib
from typing import Any, Callable

from hypothesis import strategies as st

# Numbers where parsers break: the float limits, subnormals, signed zero, integers just past
# 2**53 and past the float range. (Integers too long for int() to print cannot be drawn:
# hypothesis prints its examples; `long_number_literals` gives them as JSON text.)
EDGE_NUMBERS: list[Any] = [0, -0.0, 1, -1, 0.5, 1.0 + 2 ** -52, 1.0 - 2 ** -53, 5e-324, 2.2250738585072014e-308,
                           sys.float_info.max, -sys.float_info.max, math.inf, -math.inf, math.nan, 2 ** 53 + 1,
                           2 ** 1024, -(2 ** 1024), 10 ** 400, -(10 ** 400), 16, 8192, 8193, 10 ** 7, 15, True, False]

numbers = st.one_of(st.sampled_from(EDGE_NUMBERS), st.floats(allow_nan=True, allow_infinity=True),
                    st.integers(min_value=-(10 ** 30), max_value=10 ** 30), st.floats(0, 1))

# Strings that break tokenizers and encoders: lone surrogates, NUL, control and combining
# characters, right-to-left marks, very long text.
EDGE_TEXT: list[str] = ["", " ", "\x00", "a\ud800b", "\udfff", "\u202e\u0301", "\ufeff{}", "fg", "FG", "bg ",
                        "x" * 1001, "\n" * 3, "0: 0.5", "null", "NaN", "1e999", "[" * 50]

texts = st.one_of(st.sampled_from(EDGE_TEXT), st.text(max_size=40),
                  st.text(alphabet=st.characters(codec="utf-8"), max_size=20))

# JSON number literals beyond Python's 4300-digit int() limit, and past the float range
long_number_literals = st.one_of(st.integers(4301, 6000).map(lambda n: "9" * n),
                                 st.integers(309, 400).map(lambda n: "1e" + str(n)),
                                 st.integers(1, 400).map(lambda n: "-0." + "0" * n + "1"))

scalars = st.one_of(st.none(), st.booleans(), numbers, texts)
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=5),
                                                            st.dictionaries(texts, inner, max_size=5)),
                           max_leaves=25)


def nested(depth: int, leaf: Any = 0) -> Any:
    """`depth` levels of lists around `leaf`, built without recursion."""
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


# What one field of a valid document is replaced with: any JSON, an edge number, four of them, deep nesting.
hostile_values = st.one_of(json_values, st.sampled_from(EDGE_NUMBERS), texts,
                           st.lists(st.sampled_from(EDGE_NUMBERS), min_size=4, max_size=4),
                           st.integers(1, 300).map(nested))


@st.composite
def valid_layouts(draw, num_refs: int = 3) -> dict:
    """A valid layout v1 dict: every box at least one 16 px token at the drawn size."""
    width = draw(st.integers(16, 2048))
    height = draw(st.integers(16, 2048))
    instances = []
    for _ in range(draw(st.integers(0, 6))):
        bw = draw(st.floats(16 / width, 1.0))
        bh = draw(st.floats(16 / height, 1.0))
        x0 = draw(st.floats(0.0, 1.0 - bw))
        y0 = draw(st.floats(0.0, 1.0 - bh))
        instances.append({"box": [x0, y0, min(1.0, x0 + bw), min(1.0, y0 + bh)],
                          "ref": draw(st.none() | st.integers(0, num_refs - 1)),
                          "caption": draw(st.none() | st.text(max_size=30)),
                          "depth": draw(st.sampled_from(["fg", "mg", "bg", None])),
                          "alpha": draw(st.none() | st.floats(0.0, 1.0))})
    return {"version": 1, "width": width, "height": height, "instances": instances}


def one_line_message(err: BaseException) -> str:
    text = str(err)
    assert "\n" not in text and "\r" not in text, f"message is not one line: {text!r}"
    assert "Traceback" not in text
    return text


def accepted_or_ours(fn: Callable[[], Any], error: type[BaseException], place: str | tuple[str, ...]) -> Any:
    """Run `fn`: a return value is fine; `error` must name one of `place` on one line;
    any other exception fails."""
    places = (place,) if isinstance(place, str) else place
    try:
        return fn()
    except error as err:
        text = one_line_message(err)
        assert any(p in text for p in places), f"{type(err).__name__} does not name {places}: {text}"
        return err


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height and holds no pixel data (nothing to decode)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + \
        chunk(b"IEND", b"")

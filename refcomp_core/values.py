"""Checks for values that come from outside (JSON, widgets, metadata, flags).

Each helper answers without raising, so a caller can raise its own error type with
the place named: `show` is a repr that never fails and never floods a message,
`finite_float` accepts only finite real numbers, `json_problem` says why a value is
not plain JSON (NaN, deep nesting, non-JSON types, broken Unicode).
"""
from __future__ import annotations

import math
import reprlib
from typing import Any

_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 60
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = 6
_REPR.maxlevel = 3


def show(value: Any) -> str:
    """A short one-line repr of `value` for an error message; never raises."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 200:
        return f"an integer of about {int(value.bit_length() * 0.30103) + 1} digits"
    try:
        return _REPR.repr(value)
    except Exception:       # an object whose repr fails must not hide the real error
        return f"<{type(value).__name__}>"


def finite_float(value: Any) -> float | None:
    """`value` as a float when it is a finite int or float (never a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        out = float(value)
    except OverflowError:    # an int beyond the float range
        return None
    return out if math.isfinite(out) else None


def valid_unicode(text: str) -> bool:
    """False for strings holding lone surrogates (they cannot be encoded, e.g. by a tokenizer)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def json_problem(value: Any, max_depth: int) -> str | None:
    """Why `value` is not plain JSON (None when it is): non-finite numbers, nesting deeper
    than `max_depth`, non-string keys, broken Unicode, non-JSON types. Iterative, so a
    deeply nested or self-referencing value cannot exhaust the stack."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > max_depth:
            return f"is nested deeper than {max_depth} levels"
        if item is None or isinstance(item, (bool, int)):
            continue
        if isinstance(item, float):
            if not math.isfinite(item):
                return f"holds {item}, which JSON does not allow"
        elif isinstance(item, str):
            if not valid_unicode(item):
                return "holds text that is not valid Unicode (a lone surrogate)"
        elif isinstance(item, (list, tuple)):
            stack.extend((x, depth + 1) for x in item)
        elif isinstance(item, dict):
            if not all(isinstance(k, str) for k in item):
                return "has an object key that is not a string"
            stack.extend((x, depth + 1) for x in item.values())
            stack.extend((k, depth + 1) for k in item)
        else:
            return f"holds a {type(item).__name__}, which is not a JSON value"
    return None


def one_line(err: BaseException, limit: int = 300) -> str:
    """`TypeName: message` of a third-party exception on one short line, to quote in ours."""
    text = " ".join(str(err).split()) or "no message"
    text = text if len(text) <= limit else text[:limit - 3] + "..."
    return f"{type(err).__name__}: {text}"

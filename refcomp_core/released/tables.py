"""Strict key tables of released files: every way a {key: tensor} differs from {key: shape}, and short
listings of keys for messages."""
from __future__ import annotations

from typing import Iterable

import torch

from ..values import show


def table_problems(tensors: dict[str, torch.Tensor], table: dict[str, tuple[int, ...]]) -> list[str]:
    """Missing and unexpected keys, non-floating-point tensors and wrong shapes, each naming the key."""
    missing, unexpected = sorted(set(table) - set(tensors)), sorted(set(tensors) - set(table))
    problems = ([f"missing keys {listing(missing)}"] if missing else []) + \
               ([f"unexpected keys {listing(unexpected)}"] if unexpected else [])
    for key in sorted(set(table) & set(tensors)):
        problem = tensor_problem(key, tensors[key], table[key])
        if problem:
            problems.append(problem)
    return problems


def tensor_problem(key: str, tensor: torch.Tensor, shape: tuple[int, ...]) -> str | None:
    """Why `tensor` cannot be the weight `key` of this shape (None when it can): not floating point, another
    shape, or NaN / infinite values (a damaged download)."""
    key = key_name(key)
    if not tensor.is_floating_point():
        return f"{key} has dtype {tensor.dtype}, expected a floating-point tensor"
    if tuple(tensor.shape) != shape:
        return f"{key} has shape {tuple(tensor.shape)}, expected {shape}"
    if tensor.device.type != "meta" and not bool(torch.isfinite(tensor).all()):
        return f"{key} holds NaN or infinite values"
    return None


def listing(items: Iterable[str], count: int = 6) -> str:
    """The first `count` items, comma-separated, and how many more."""
    items = list(items)
    return ", ".join(key_name(i) for i in items[:count]) + (f" (+{len(items) - count} more)" if len(items) > count
                                                            else "")


def key_name(key: object, limit: int = 120) -> str:
    """A key read from a file, as a message shows it: itself when printable, else its repr (a hostile key
    must not break the one-line message), cut to `limit` characters."""
    text = key if isinstance(key, str) and key.isprintable() else repr(key) if isinstance(key, str) else show(key)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def summary(problems: list[str], count: int = 6) -> str:
    """The first `count` problems, semicolon-separated, and how many more."""
    more = f"; (+{len(problems) - count} more problems)" if len(problems) > count else ""
    return "; ".join(problems[:count]) + more

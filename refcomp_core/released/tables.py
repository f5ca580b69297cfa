"""Strict key tables of released files: every way a {key: tensor} differs from {key: shape}."""
from __future__ import annotations

from typing import Iterable

import torch


def table_problems(tensors: dict[str, torch.Tensor], table: dict[str, tuple[int, ...]]) -> list[str]:
    """Missing and unexpected keys, non-floating-point tensors and wrong shapes, each naming the key."""
    missing, unexpected = sorted(set(table) - set(tensors)), sorted(set(tensors) - set(table))
    problems = ([f"missing keys {listing(missing)}"] if missing else []) + \
               ([f"unexpected keys {listing(unexpected)}"] if unexpected else [])
    for key in sorted(set(table) & set(tensors)):
        t = tensors[key]
        if not t.is_floating_point():
            problems.append(f"{key} has dtype {t.dtype}, expected a floating-point tensor")
        elif tuple(t.shape) != table[key]:
            problems.append(f"{key} has shape {tuple(t.shape)}, expected {table[key]}")
    return problems


def listing(items: Iterable[str], count: int = 6) -> str:
    """The first `count` items, comma-separated, and how many more."""
    items = list(items)
    return ", ".join(items[:count]) + (f" (+{len(items) - count} more)" if len(items) > count else "")


def summary(problems: list[str], count: int = 6) -> str:
    """The first `count` problems, semicolon-separated, and how many more."""
    more = f"; (+{len(problems) - count} more problems)" if len(problems) > count else ""
    return "; ".join(problems[:count]) + more

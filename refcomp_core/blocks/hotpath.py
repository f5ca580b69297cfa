"""Which hot path a patched block takes, chosen by device (issue 13, DESIGN §7).

- `loop` (CPU): one SDPA per box (Assemble-Attn) or per packed segment (InstanceAssemble) and
  sparse blends (gather, blend, `index_add` on covered tokens only). Fastest measured on CPU,
  where the work done counts and launches are nearly free.
- `fused` (CUDA): one `flex_attention` call over all packed sequences with a document block mask
  built once per layout, and dense blends (a (tokens x FG) weight matrix times the offsets, the FG
  box means as one matmul). Few, large kernels: on a GPU the many small ops of the loop path leave
  it waiting on Python.

Both compute the same function; tests force each path on CPU (`force`) and compare them.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Literal

import torch

Path = Literal["loop", "fused"]
_FORCED: list[Path | None] = [None]      # a plain global (not a ContextVar): torch.compile traces it


def has_flex_attention() -> bool:
    """flex_attention exists in this torch (2.5+)."""
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


def fused(device: torch.device) -> bool:
    """True when block calls on `device` take the fused path."""
    forced = _FORCED[0]
    if forced is not None:
        return forced == "fused"
    return device.type == "cuda" and has_flex_attention()


@contextlib.contextmanager
def force(path: Path | None) -> Iterator[None]:
    """Run every block call inside the `with` on `path` whatever the device (None: by device)."""
    if path not in (None, "loop", "fused"):
        raise ValueError(f"hot path must be 'loop', 'fused' or None, got {path!r}")
    before, _FORCED[0] = _FORCED[0], path
    try:
        yield
    finally:
        _FORCED[0] = before

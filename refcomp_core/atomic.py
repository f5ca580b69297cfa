"""Atomic file writes: a killed process leaves the old file or none, never half of one.

    with atomic_path("out.safetensors") as tmp:
        save_file(tensors, tmp)          # any writer that takes a path

The new content goes to a temporary file in the same folder, is flushed to disk, and
then renamed over the target in one step (`os.replace` is atomic on POSIX and Windows).
On an error the temporary file is removed and the target keeps its old content.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Iterator

FILE_MODE = 0o644      # mkstemp makes 0600; model and output folders are often shared


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """A temporary path next to `path`; its content replaces `path` when the block ends without error."""
    target = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(target))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

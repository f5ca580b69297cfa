"""The small error family of RefComp.

Every error names what was wrong, where, and how to fix it. They subclass the
builtin exception a caller would expect (ValueError / FileNotFoundError), so
generic handlers still work. Each input surface raises one of them: layouts and
overrides `LayoutError`, checkpoint files `CheckpointError`, model folders and
models `ModelMismatchError`, reference images `ReferenceImageError`, command-line
flags `UsageError`. The limits a user can hit are listed in docs/limits.md.
"""
from __future__ import annotations


class RefCompError(ValueError):
    """Base class for RefComp input errors (a `ValueError`)."""


class LayoutError(RefCompError):
    """A layout v1 document is invalid. The message names the instance and field."""


class CheckpointError(RefCompError):
    """A RefComp checkpoint is missing, not safetensors, damaged, or does not fit the model."""


class ModelMismatchError(RefCompError):
    """A model (or a local model folder) is not the kind RefComp expects: a non-FLUX.1 model,
    a CLIP folder given as DINOv2, a damaged config. The message names the type found."""


class MissingEncoderError(RefCompError):
    """An instance needs an image encoder (DINOv2 or CLIP) that was not provided."""


class ReferenceImageError(RefCompError):
    """A reference image cannot be used: unreadable, damaged or too large. Names the file."""


class UsageError(RefCompError):
    """A command-line flag has a bad value. The message names the flag."""

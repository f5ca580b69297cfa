"""The small error family of RefComp.

Every error names what was wrong, where, and how to fix it. They subclass the
builtin exception a caller would expect (ValueError / FileNotFoundError), so
generic handlers still work.
"""
from __future__ import annotations


class RefCompError(ValueError):
    """Base class for RefComp input errors (a `ValueError`)."""


class LayoutError(RefCompError):
    """A layout v1 document is invalid. The message names the instance and field."""


class CheckpointError(RefCompError):
    """A RefComp checkpoint is missing, not safetensors, or does not fit the model."""


class ModelMismatchError(RefCompError):
    """The model plugged in is not a FLUX.1 model RefComp can patch."""


class MissingEncoderError(RefCompError):
    """An instance needs an image encoder (DINOv2 or CLIP) that was not provided."""

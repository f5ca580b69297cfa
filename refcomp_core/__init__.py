"""refcomp_core: the math of RefComp, pure torch + einops + stdlib.

Both hosts (the diffusers host in `refcomp_core.hosts`, the ComfyUI host in
`nodes/`) run the same block math from `refcomp_core.blocks`. This package never
imports ComfyUI.

Axis letters used across the package: b batch, L text tokens, N image tokens,
n instances, g FG instances, t tokens of a box or a covered set, h heads,
c channels (per head), D model width, r references, p sample points, f frequencies.
"""
from .adapter import NAMESPACES, STAGE_MODULES, RefCompAdapter
from .config import LORA_TARGETS, RefCompConfig
from .controls import Controls
from .errors import CheckpointError, LayoutError, MissingEncoderError, ModelMismatchError, RefCompError
from .geometry import TokenGrid
from .layout import Instance, Layout, parse_layout
from .session import RefCompSession
from .state import CompositionState, InstanceFeatures, build_state, predict_alpha

__all__ = ["NAMESPACES", "STAGE_MODULES", "LORA_TARGETS", "RefCompAdapter", "RefCompConfig", "Controls",
           "CheckpointError", "LayoutError", "MissingEncoderError", "ModelMismatchError", "RefCompError",
           "TokenGrid", "Instance", "Layout", "parse_layout", "RefCompSession", "CompositionState",
           "InstanceFeatures", "build_state", "predict_alpha"]

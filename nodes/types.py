"""Values that travel on RefComp's sockets (all `REFCOMP_*` types)."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch

from refcomp_core.layout import Layout
from refcomp_core.state import InstanceFeatures

MODEL_TYPE = "REFCOMP_MODEL"
REFERENCES_TYPE = "REFCOMP_REFERENCES"
LAYOUT_TYPE = "REFCOMP_LAYOUT"
INSTANCES_TYPE = "REFCOMP_INSTANCES"
XVERSE_TYPE = "REFCOMP_XVERSE"


@dataclass
class RefCompModel:
    """A loaded file. kind "refcomp": `patcher.model.adapter` is the RefCompAdapter (a RefComp checkpoint or
    converted InstanceAssemble weights). kind "xverse": converted XVerse weights; `xverse` is the
    XVerseAdapter, `patcher` holds its LoRA (needed while sampling) and `resampler` its T-Mod adapter (needed
    once per composition, then ComfyUI may offload it)."""

    patcher: Any
    info: Any
    name: str
    kind: str = "refcomp"
    xverse: Any = None
    resampler: Any = None

    @property
    def adapter(self):
        if self.kind != "refcomp":
            from refcomp_core.errors import RefCompError
            raise RefCompError(f"{self.name} is an XVerse file: connect it to XVerse Encode's xverse_model, not to a "
                               "refcomp_model input")
        return self.patcher.model.adapter


@dataclass
class ReferenceSet:
    """Reference images in a stable order; images[i] is (H_i, W_i, 3) float in [0, 1], RGB."""

    images: list[torch.Tensor] = field(default_factory=list)
    names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)


@dataclass
class RefCompInstances:
    """A validated layout plus the frozen-encoder features of its references and captions."""

    layout: Layout
    features: InstanceFeatures
    num_refs: int

    def with_layout(self, layout: Layout) -> "RefCompInstances":
        return replace(self, layout=layout)


@dataclass
class XVerseBundle:
    """XVerse Encode's output: the loaded XVerse model and the prepared references (nodes.xverse_inputs)."""

    model: Any
    inputs: Any

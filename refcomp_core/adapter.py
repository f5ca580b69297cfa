"""`RefCompAdapter`: all trainable state of RefComp in one nn.Module.

State-dict namespaces (DESIGN §5): alpha., encoder., layout_head., modulation.,
bridge., assemble_gate., lora., single_gate.
"""
from __future__ import annotations

import torch
from torch import nn

from .config import RefCompConfig
from .modules import (AlphaPredictor, AssembleLoRA, AssembleOutput, FeedbackBridge, InstanceEncoder, LayoutHead,
                      ModulationHead, ScalarGates)

NAMESPACES: tuple[str, ...] = ("alpha", "encoder", "layout_head", "modulation", "bridge", "assemble_gate", "lora",
                               "single_gate")

# Which namespaces train in which stage (DESIGN §6).
STAGE_MODULES: dict[int, tuple[str, ...]] = {
    1: ("alpha", "encoder", "layout_head", "lora", "assemble_gate"),
    2: ("alpha", "encoder", "layout_head", "lora", "assemble_gate", "modulation", "single_gate"),
    3: ("bridge",),
}


class RefCompAdapter(nn.Module):
    """M1-M5, the Assemble-Attn LoRA and output gates, and the single-block gates."""

    def __init__(self, config: RefCompConfig) -> None:
        super().__init__()
        self.config = config
        d = config.hidden_size
        self.alpha = AlphaPredictor(clip_dim=config.clip_dim, hidden=config.alpha_hidden)
        self.encoder = InstanceEncoder(config)
        self.layout_head = LayoutHead(d)
        self.modulation = ModulationHead(config)
        self.bridge = FeedbackBridge(config)
        blocks = config.layout_block_ids
        self.lora = nn.ModuleDict({str(b): AssembleLoRA(config) for b in blocks})
        self.assemble_gate = nn.ModuleDict({str(b): AssembleOutput(dim=d, kind=config.assemble_output)
                                            for b in blocks})
        self.single_gate = ScalarGates(config.num_single_blocks)

    def is_layout_block(self, block: int) -> bool:
        return str(block) in self.lora

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per namespace."""
        return {ns: sum(p.numel() for p in getattr(self, ns).parameters()) for ns in NAMESPACES}

    def set_trainable(self, namespaces: tuple[str, ...]) -> None:
        """Freeze everything except the given namespaces."""
        unknown = set(namespaces) - set(NAMESPACES)
        if unknown:
            raise ValueError(f"unknown adapter namespaces {sorted(unknown)}; known: {list(NAMESPACES)}")
        for ns in NAMESPACES:
            getattr(self, ns).requires_grad_(ns in namespaces)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

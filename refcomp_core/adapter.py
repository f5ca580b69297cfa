"""`RefCompAdapter`: all trainable state of RefComp in one nn.Module.

State-dict namespaces (DESIGN §5): alpha., encoder., layout_head., modulation.,
bridge., assemble_gate., lora., single_gate.
"""
from __future__ import annotations

import torch
from torch import nn

from .config import IA_DOUBLE_SITES, IA_SINGLE_SITES, RefCompConfig
from .modules import (AlphaPredictor, AssembleLoRA, AssembleOutput, FeedbackBridge, InstanceEncoder, LayoutHead,
                      LoRASet, ModulationHead, ScalarGates)
from .pathways.ia_encoder import IALayoutEncoder

NAMESPACES: tuple[str, ...] = ("alpha", "encoder", "layout_head", "modulation", "bridge", "assemble_gate", "lora",
                               "single_gate")

# Which namespaces train in which stage (DESIGN §6). A namespace the adapter does not have
# (e.g. layout_head with the InstanceAssemble layout pathway) is skipped.
STAGE_MODULES: dict[int, tuple[str, ...]] = {
    1: ("alpha", "encoder", "layout_head", "lora", "assemble_gate"),
    2: ("alpha", "encoder", "layout_head", "lora", "assemble_gate", "modulation", "single_gate"),
    3: ("bridge",),
}


class RefCompAdapter(nn.Module):
    """M1-M5, the layout pathway's LoRA and outputs, and the single-block gates.

    `config.layout_pathway` picks the layout pathway:
    - "assemble": RefComp's shared-projection Assemble-Attn (encoder M2, layout_head M3,
      lora / assemble_gate per layout block);
    - "instanceassemble": InstanceAssemble's branch after the block (encoder = its layout
      net, lora = its LoRA sites per layout block, assemble_gate = its zero-init
      `layout_forward` linear; single layout blocks are keyed "s<i>").
    `config.identity` adds the identity pathway (alpha, modulation, bridge, single_gate);
    a converted InstanceAssemble file has none.
    """

    def __init__(self, config: RefCompConfig) -> None:
        super().__init__()
        self.config = config
        d = config.hidden_size
        if config.identity:
            self.alpha = AlphaPredictor(clip_dim=config.clip_dim, hidden=config.alpha_hidden)
        if config.layout_pathway == "instanceassemble":
            ia = config.instanceassemble
            self.encoder = IALayoutEncoder(config)
            self.lora = nn.ModuleDict({**{str(b): LoRASet(_ia_sites(config, str(b), IA_DOUBLE_SITES))
                                          for b in ia.double_blocks},
                                       **{f"s{b}": LoRASet(_ia_sites(config, f"s{b}", IA_SINGLE_SITES))
                                          for b in ia.single_blocks}})
            self.assemble_gate = nn.ModuleDict({key: AssembleOutput(dim=d, kind="linear") for key in self.lora})
        else:
            self.encoder = InstanceEncoder(config)
            self.layout_head = LayoutHead(d)
            blocks = config.layout_block_ids
            self.lora = nn.ModuleDict({str(b): AssembleLoRA(config) for b in blocks})
            self.assemble_gate = nn.ModuleDict({str(b): AssembleOutput(dim=d, kind=config.assemble_output)
                                                for b in blocks})
        if config.identity:
            self.modulation = ModulationHead(config)
            self.bridge = FeedbackBridge(config)
            self.single_gate = ScalarGates(config.num_single_blocks)

    @property
    def namespaces(self) -> tuple[str, ...]:
        """The namespaces this adapter has (a subset of NAMESPACES)."""
        return tuple(ns for ns in NAMESPACES if hasattr(self, ns))

    def is_layout_block(self, block: int) -> bool:
        return str(block) in self.lora

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per namespace."""
        return {ns: sum(p.numel() for p in getattr(self, ns).parameters()) if hasattr(self, ns) else 0
                for ns in NAMESPACES}

    def set_trainable(self, namespaces: tuple[str, ...]) -> None:
        """Freeze everything except the given namespaces."""
        unknown = set(namespaces) - set(NAMESPACES)
        if unknown:
            raise ValueError(f"unknown adapter namespaces {sorted(unknown)}; known: {list(NAMESPACES)}")
        for ns in self.namespaces:
            getattr(self, ns).requires_grad_(ns in namespaces)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype


def _ia_sites(config: RefCompConfig, key: str, names: tuple[str, ...]) -> dict[str, tuple[int, int, int, float]]:
    """(dim_in, dim_out, rank, multiplier) of the InstanceAssemble LoRA sites of one layout block."""
    d, mlp = config.hidden_size, config.instanceassemble.mlp_hidden
    dims = {"img_mod": (d, 6 * d), "txt_mod": (d, 6 * d), "img_mlp_out": (mlp, d), "txt_mlp_out": (mlp, d),
            "mod": (d, 3 * d), "mlp_in": (d, mlp), "out": (d + mlp, d)}
    sites = config.instanceassemble.sites(key)
    return {name: (*dims.get(name, (d, d)), *sites[name]) for name in names if name in sites}

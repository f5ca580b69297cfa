"""`XVerseAdapter`: the converted XVerse weights as modules (WEIGHTS_COMPAT §2.2).

- `net`, `net2`: the two resamplers of the T-Mod adapter (`resampler.py`), keys as released;
- `lora`: one `LoRAPair` per site at its diffusers module path, so the state-dict keys are
  `lora.<module path>.down` (r, in) = lora_A and `lora.<module path>.up` (out, r) = lora_B.

A converted file stores these tensors under `xverse.` (see `refcomp_core.released.xverse`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import XVerseConfig
from .resampler import TextImageResampler


class LoRAPair(nn.Module):
    """ΔW = up @ down of one module. `alpha_over_rank` is the file's own scale (1 for the release)."""

    def __init__(self, rank: int, in_features: int, out_features: int, alpha_over_rank: float) -> None:
        super().__init__()
        self.down = nn.Parameter(torch.zeros(rank, in_features), requires_grad=False)
        self.up = nn.Parameter(torch.zeros(out_features, rank), requires_grad=False)
        self.alpha_over_rank = alpha_over_rank

    def delta(self, x: torch.Tensor, multiplier: float) -> torch.Tensor:
        """x: (..., in) -> multiplier * x @ downᵀ @ upᵀ: (..., out). The caller gives the whole multiplier
        (g * alpha_over_rank, or an absolute single-block weight, §2.6)."""
        return F.linear(F.linear(x, self.down), self.up) * multiplier


class LoRATree(nn.Module):
    """LoRA pairs nested along their module paths ('transformer_blocks.0.attn.to_out.0')."""

    def __init__(self, sites: dict[str, tuple[int, int, int, float]]) -> None:
        """sites: module path -> (rank, in_features, out_features, alpha_over_rank)."""
        super().__init__()
        for path, (rank, fan_in, fan_out, scale) in sorted(sites.items()):
            *parents, leaf = path.split(".")
            node: nn.Module = self
            for part in parents:
                if part not in node._modules:
                    node.add_module(part, nn.Module())
                node = node._modules[part]
            node.add_module(leaf, LoRAPair(rank, fan_in, fan_out, scale))


class XVerseAdapter(nn.Module):
    """XVerse's T-Mod adapter and LoRA, built from an `XVerseConfig`."""

    def __init__(self, config: XVerseConfig) -> None:
        super().__init__()
        self.config = config
        common = dict(heads=config.heads, text_dim=config.input_text_dim, image_dim=config.input_image_dim,
                      time_dim=config.time_embedding_dim)
        self.net = TextImageResampler(width=config.width, layers=config.layers, out_dim=config.out_dim, **common)
        self.net2 = TextImageResampler(width=config.pblock_width, layers=config.pblock_layers,
                                       out_dim=config.out_dim * config.offset_blocks, **common)
        dims = config.lora_sites()
        self.lora = LoRATree({site: (rank, *dims[site], scale) for site, (rank, scale) in config.lora.items()})

    def lora_pair(self, site: str) -> LoRAPair | None:
        """The LoRA of a diffusers module path, or None when the file has none there."""
        if site not in self.config.lora:
            return None
        return self.lora.get_submodule(site)

    def parameter_counts(self) -> dict[str, int]:
        return {name: sum(p.numel() for p in getattr(self, name).parameters()) for name in ("net", "net2", "lora")}

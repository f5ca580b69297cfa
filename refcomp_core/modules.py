"""The trainable pieces of the adapter (DESIGN §2). All dimensions come from
`RefCompConfig`. Axis letters: n instances, t tokens, c channels.

Init rules, written where they happen:
- every new residual path starts at zero, so a fresh adapter leaves FLUX unchanged;
- where two stacked zero layers would block all gradient (M4's shared MLP), only the
  last layer is zeroed (adaLN-Zero practice).
"""
from __future__ import annotations

import torch
from torch import nn

from .config import RefCompConfig
from .geometry import dense_sample, fourier_embed


class LowRank(nn.Module):
    """x -> up(down(x)) with rank r. `up` is zero-initialised: the map starts at 0."""

    def __init__(self, *, dim_in: int, dim_out: int, rank: int, scale: float = 1.0) -> None:
        super().__init__()
        self.down = nn.Linear(dim_in, rank, bias=False)
        self.up = nn.Linear(rank, dim_out, bias=False)
        self.scale = scale
        nn.init.kaiming_uniform_(self.down.weight, a=5 ** 0.5)
        nn.init.zeros_(self.up.weight)                       # zero-init: no change at start

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., dim_in) -> (..., dim_out)"""
        return self.up(self.down(x)) * self.scale


class AlphaPredictor(nn.Module):
    """M1: [CLIP image embed | box area | depth one-hot] -> sigmoid -> alpha in (0, 1)."""

    def __init__(self, *, clip_dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(clip_dim + 1 + 3, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        nn.init.zeros_(self.net[2].weight)                   # zero last layer: alpha = sigmoid(0) = 0.5
        nn.init.zeros_(self.net[2].bias)

    def forward(self, clip: torch.Tensor, area: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        """clip: (n, clip_dim), area: (n,), depth: (n, 3) one-hot (zeros when unknown) -> (n,)"""
        x = torch.cat([clip, area[:, None], depth], dim=-1)
        return torch.sigmoid(self.net(x)).squeeze(-1)


class InstanceEncoder(nn.Module):
    """M2: [DenseSample Fourier features | visual feature] -> MLP -> instance token (D),
    plus a zero-init projection of the instance caption's CLIP text embedding."""

    def __init__(self, config: RefCompConfig) -> None:
        super().__init__()
        self.k = config.dense_k
        self.freqs = config.fourier_freqs
        self.temperature = config.fourier_temperature
        d = config.hidden_size
        self.clip_to_visual = nn.Linear(config.clip_dim, config.visual_dim)
        if config.dino_dim != config.visual_dim:
            raise ValueError(f"RefCompConfig.dino_dim ({config.dino_dim}) must equal visual_dim "
                             f"({config.visual_dim}): the DINOv2 CLS is used as the visual feature directly")
        self.mlp = nn.Sequential(nn.Linear(config.spatial_dim + config.visual_dim, d), nn.LayerNorm(d), nn.SiLU(),
                                 nn.Linear(d, d))
        for layer in (self.mlp[0], self.mlp[3], self.clip_to_visual):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.caption = nn.Linear(config.text_dim, d)
        nn.init.zeros_(self.caption.weight)                   # zero-init: captions add nothing at start
        nn.init.zeros_(self.caption.bias)

    def spatial(self, boxes: torch.Tensor) -> torch.Tensor:
        """boxes: (n, 4) -> (n, k*k*4F)"""
        points = dense_sample(boxes, self.k)                                      # (n, p, 2)
        return fourier_embed(points, self.freqs, self.temperature).flatten(1)     # (n, p*4F)

    def forward(self, boxes: torch.Tensor, visual: torch.Tensor, caption: torch.Tensor | None,
                has_caption: torch.Tensor | None) -> torch.Tensor:
        """boxes: (n, 4), visual: (n, visual_dim), caption: (n, text_dim) or None,
        has_caption: (n,) bool -> tokens (n, D)"""
        token = self.mlp(torch.cat([self.spatial(boxes), visual], dim=-1))
        if caption is not None and has_caption is not None:
            token = token + self.caption(caption) * has_caption[:, None].to(token.dtype)
        return token


class LayoutHead(nn.Module):
    """M3: Linear D -> D initialised to the identity."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, dim)
        nn.init.eye_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(n, D) -> (n, D)"""
        return self.proj(tokens)


class ModulationHead(nn.Module):
    """M4: shared offset MLP and per-double-block maps P_b.

    Only the shared MLP's *last* layer is zeroed: zeroing both would leave
    SiLU(0) = 0 hidden activations and a zero second weight, so neither weight
    would ever get gradient (the plan's bug). P_b's up-projection is zero-init.
    """

    def __init__(self, config: RefCompConfig) -> None:
        super().__init__()
        d = config.hidden_size
        self.shared = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        nn.init.zeros_(self.shared[2].weight)               # last layer only: output 0, both layers train
        nn.init.zeros_(self.shared[2].bias)
        if config.modulation_rank == "full":
            blocks = [nn.Linear(d, d) for _ in range(config.num_double_blocks)]
            for b in blocks:
                nn.init.zeros_(b.weight)
                nn.init.zeros_(b.bias)
        else:
            blocks = [LowRank(dim_in=d, dim_out=d, rank=config.modulation_rank)
                      for _ in range(config.num_double_blocks)]
        self.per_block = nn.ModuleList(blocks)

    def block_offset(self, block: int, base: torch.Tensor) -> torch.Tensor:
        """off_b = base + P_b(base), with base = shared + feedback.  (..., D) -> (..., D)"""
        return base + self.per_block[block](base)


class FeedbackBridge(nn.Module):
    """M5: per double block, pooled box features -> low-rank map -> feedback for the next block."""

    def __init__(self, config: RefCompConfig) -> None:
        super().__init__()
        d = config.hidden_size
        self.per_block = nn.ModuleList(LowRank(dim_in=d, dim_out=d, rank=config.bridge_rank)
                                       for _ in range(config.num_double_blocks))

    def forward(self, block: int, pooled: torch.Tensor) -> torch.Tensor:
        """pooled: (b, n_fg, D) -> feedback (b, n_fg, D)"""
        return self.per_block[block](pooled)


class LoRASet(nn.Module):
    """Named LoRA deltas of one block's projections: `deltas[name]` maps (..., dim_in) to
    (..., dim_out) with its own rank and scale. Used only inside the layout branches; the base
    projections stay frozen and the global FLUX path never sees them."""

    def __init__(self, sites: dict[str, tuple[int, int, int, float]]) -> None:
        """sites: name -> (dim_in, dim_out, rank, scale)."""
        super().__init__()
        self.deltas = nn.ModuleDict({name: LowRank(dim_in=i, dim_out=o, rank=r, scale=s)
                                     for name, (i, o, r, s) in sites.items()})

    def delta(self, name: str, x: torch.Tensor) -> torch.Tensor | None:
        """x: (..., dim_in) -> (..., dim_out), or None when `name` has no LoRA."""
        module = self.deltas[name] if name in self.deltas else None
        return None if module is None else module(x)


class AssembleLoRA(LoRASet):
    """Rank-r LoRA deltas for one Assemble-Attn layout block (names in LORA_TARGETS)."""

    def __init__(self, config: RefCompConfig) -> None:
        d = config.hidden_size
        super().__init__({name: (d, d, config.lora_rank, config.lora_scale) for name in config.lora_targets})


class AssembleOutput(nn.Module):
    """Zero-init output of the branch: a per-channel gate (default) or a D x D linear."""

    def __init__(self, *, dim: int, kind: str) -> None:
        super().__init__()
        self.kind = kind
        if kind == "gate":
            self.gate = nn.Parameter(torch.zeros(dim))      # zero-init: branch adds nothing at start
        else:
            self.linear = nn.Linear(dim, dim)
            nn.init.zeros_(self.linear.weight)
            nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (..., D)"""
        return x * self.gate if self.kind == "gate" else self.linear(x)


class ScalarGates(nn.Module):
    """One learnable scalar per single-stream block, zero-init."""

    def __init__(self, count: int) -> None:
        super().__init__()
        self.gate = nn.Parameter(torch.zeros(count))

"""`CompositionState`: everything independent of the denoising step, computed once
per sampling run (or once per training sample) and reused by every block call.

Axis letters: n instances, g FG instances, t tokens, c channels (D), r refs.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

import torch

from .adapter import RefCompAdapter
from .blocks.packed import Packing
from .errors import MissingEncoderError
from .geometry import TokenGrid, box_token_indices, soft_mask
from .layout import DEPTHS, Layout
from .rope import Rope

log = logging.getLogger(__name__)


@dataclass
class InstanceFeatures:
    """Frozen-encoder outputs for one layout, computed once by the host.

    clip_image: (r, clip_dim) CLIP-L image embeds of the references, or None
    dino: (r, dino_dim) DINOv2 CLS of the references, or None
    caption: (n, text_dim) CLIP-L pooled text embeds per instance, or None. Extractors encode ""
        for an instance without a caption (InstanceAssemble's layout net reads that embedding;
        RefComp's own encoder masks caption-less instances out).
    """

    clip_image: torch.Tensor | None = None
    dino: torch.Tensor | None = None
    caption: torch.Tensor | None = None


@dataclass
class GridIndex:
    """Token index lists and masks of one state on one grid (and device), built once.

    asm_cov: (ta,) sorted tokens covered by any box; asm_pos[i]: (t_i,) positions of
    box i's tokens inside asm_cov; asm_count: (ta,) boxes covering each token;
    asm_packing: the [l_i ; box i] sequences packed end to end (`blocks.packed`).
    mod_cov: (tm,) tokens in any FG box's support; mod_w: (tm, g) weights w_i.
    fg_tok / fg_seg: flat token indices of FG boxes and their FG instance id; fg_size: (g,).
    Dense forms for the fused (CUDA) hot path: mod_dense (N, g) the weights over the whole grid
    (0 outside every support), fg_pool (g, N) the mean over each FG box as a matrix.
    """

    asm_cov: torch.Tensor
    asm_pos: list[torch.Tensor]
    asm_count: torch.Tensor
    asm_packing: Packing
    mod_cov: torch.Tensor
    mod_w: torch.Tensor
    mod_dense: torch.Tensor
    fg_tok: torch.Tensor
    fg_seg: torch.Tensor
    fg_size: torch.Tensor
    fg_pool: torch.Tensor
    centres: torch.Tensor       # (n, 2) (row, col) position ids of box centres
    _cast: dict[tuple, torch.Tensor] = field(default_factory=dict, repr=False)
    _rope: tuple | None = field(default=None, repr=False)

    def covered_rope(self, rope: Rope, offset: int) -> Rope:
        """`rope` at the covered tokens (asm_cov + offset), with its rotation built.

        Cached while the host passes the same rope tensors (every block of one transformer
        forward); the cache holds `rope`, so its storage cannot be reused by another tensor.
        Under torch.compile the rows are gathered in the graph instead."""
        if torch.compiler.is_compiling():
            return rope[self.asm_cov + offset]
        key = (rope.cos.data_ptr(), rope.sin.data_ptr(), tuple(rope.cos.shape), rope.cos.stride(),
               rope.cos.device, offset)
        if self._rope is None or self._rope[0] != key:
            rows = rope[self.asm_cov + offset]
            rows.turn                                                   # noqa: B018 (built once here)
            self._rope = (key, rope, rows)
        return self._rope[2]

    def blend_matrix(self, length: int, offset: int, dtype: torch.dtype) -> torch.Tensor:
        """[w | 1] over a stream of `length` tokens whose grid starts at `offset`: rows of tokens
        outside every FG support are (0, ..., 0, 1).  -> (length, g + 1), cached per arguments.

        Times [delta (g rows) ; base] it gives each token's modulation in one matmul."""
        key = ("blend", length, offset, dtype)
        if key not in self._cast:
            n, g = self.mod_dense.shape
            m = torch.zeros(length, g + 1, device=self.mod_dense.device)
            m[offset:offset + n, :g] = self.mod_dense
            m[:, g] = 1.0
            self._cast[key] = m.to(dtype)
        return self._cast[key]

    def pool_matrix(self, dtype: torch.dtype) -> torch.Tensor:
        """fg_pool in `dtype`, cached.  -> (g, N)"""
        key = ("pool", dtype)
        if key not in self._cast:
            self._cast[key] = self.fg_pool.to(dtype)
        return self._cast[key]


@dataclass
class CompositionState:
    """Per-run cache (DESIGN §3). Tensors keep their autograd graph for training.

    `layout_tokens` is what the layout pathway starts from: l_i = (1 - alpha_i) head(token_i) for
    Assemble-Attn, InstanceAssemble's layout tokens Lambda_0 for its branch."""

    boxes: torch.Tensor            # (n, 4)
    alpha: torch.Tensor            # (n,)
    is_fg: list[bool]
    fg_ids: torch.Tensor           # (g,) long
    tokens: torch.Tensor           # (n, D) instance tokens
    layout_tokens: torch.Tensor    # (n, D) l_i = (1 - alpha_i) * head(token_i)
    shared: torch.Tensor           # (g, D) shared modulation offsets of FG instances
    raw_boxes: tuple[tuple[float, float, float, float], ...] = ()   # the layout's boxes, full precision
    _grids: dict[tuple, GridIndex] = field(default_factory=dict, repr=False)
    _memo: dict[tuple, object] = field(default_factory=dict, repr=False)

    @property
    def n(self) -> int:
        return self.boxes.shape[0]

    @property
    def n_fg(self) -> int:
        return int(self.fg_ids.numel())

    @property
    def alpha_fg(self) -> torch.Tensor:
        """(g,)"""
        return self.alpha[self.fg_ids]

    def grid(self, grid: TokenGrid, margin: float, device: torch.device) -> GridIndex:
        """Index lists for a grid, built once per (grid, margin, device) and cached."""
        key = (grid, float(margin), str(device))
        if key not in self._grids:
            self._grids[key] = _build_grid(self, grid, margin, device)
        return self._grids[key]

    def memo(self, key: tuple, build: "Callable[[], object]") -> object:
        """A pathway's own per-state cache (e.g. its index lists per grid), built once."""
        if key not in self._memo:
            self._memo[key] = build()
        return self._memo[key]


def _build_grid(state: CompositionState, grid: TokenGrid, margin: float, device: torch.device) -> GridIndex:
    boxes = [tuple(b) for b in state.boxes.detach().cpu().tolist()]
    idx = [box_token_indices(b, grid) for b in boxes]
    if idx:
        flat = torch.cat(idx)
        asm_cov, inverse = torch.unique(flat, sorted=True, return_inverse=True)
        asm_count = torch.bincount(inverse, minlength=asm_cov.numel()).float()
        asm_pos = list(torch.split(inverse, [t.numel() for t in idx]))
    else:
        asm_cov = torch.zeros(0, dtype=torch.long)
        asm_count = torch.zeros(0)
        asm_pos = []
    fg = state.fg_ids.tolist()
    n_tok = grid.n
    if fg:
        masks = torch.stack([soft_mask(boxes[i], grid, margin) for i in fg], dim=1)     # (N, g)
        mod_dense = masks / masks.sum(dim=1, keepdim=True).clamp(min=1.0)
        mod_cov = torch.nonzero(masks.sum(dim=1) > 0).squeeze(1)
        mod_w = mod_dense[mod_cov]
        fg_tok = torch.cat([idx[i] for i in fg])
        fg_seg = torch.cat([torch.full((idx[i].numel(),), j, dtype=torch.long) for j, i in enumerate(fg)])
        fg_size = torch.tensor([idx[i].numel() for i in fg], dtype=torch.float32)
        fg_pool = torch.zeros(len(fg), n_tok).index_put_((fg_seg, fg_tok), (1 / fg_size)[fg_seg])   # (g, N)
    else:
        mod_cov = torch.zeros(0, dtype=torch.long)
        mod_w = torch.zeros(0, 0)
        mod_dense = torch.zeros(n_tok, 0)
        fg_tok = fg_seg = torch.zeros(0, dtype=torch.long)
        fg_size = torch.zeros(0)
        fg_pool = torch.zeros(0, n_tok)
    b = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    centres = torch.stack([(b[:, 1] + b[:, 3]) / 2 * grid.content_h - 0.5,
                           (b[:, 0] + b[:, 2]) / 2 * grid.content_w - 0.5], dim=-1)
    to = lambda t: t.to(device)   # noqa: E731
    return GridIndex(asm_cov=to(asm_cov), asm_pos=[to(p) for p in asm_pos], asm_count=to(asm_count),
                     asm_packing=Packing.build(asm_pos, int(asm_cov.numel()), device),
                     mod_cov=to(mod_cov), mod_w=to(mod_w), mod_dense=to(mod_dense), fg_tok=to(fg_tok),
                     fg_seg=to(fg_seg), fg_size=to(fg_size), fg_pool=to(fg_pool), centres=to(centres))


def build_state(adapter: RefCompAdapter, layout: Layout, features: InstanceFeatures) -> CompositionState:
    """Run the step-independent parts of the adapter for one layout (DESIGN §2-3).

    Raises `MissingEncoderError` when an instance needs CLIP, DINOv2 or caption features that
    were not given.
    """
    cfg = adapter.config
    device, dtype = adapter.device, adapter.dtype
    n = len(layout.instances)
    if n == 0:
        log.warning("RefComp: the layout has no instances; composition is a no-op")
    raw = tuple(tuple(i.box) for i in layout.instances)
    boxes = torch.tensor([list(b) for b in raw], dtype=dtype, device=device).reshape(n, 4)
    refs = [i.ref if isinstance(i.ref, int) else None for i in layout.instances]
    if cfg.identity:
        clip = _gather(features.clip_image, refs, cfg.clip_dim, device, dtype)
        alpha = _alpha(adapter, layout, refs, boxes, clip, features)                      # (n,)
        is_fg = [r is not None and a >= 0.5 for r, a in zip(refs, alpha.detach().tolist())]
        visual = _visual(adapter, refs, is_fg, clip, features)                            # (n, visual_dim)
    else:
        if any(r is not None for r in refs):
            log.warning("RefComp: this checkpoint has no identity pathway (e.g. converted InstanceAssemble "
                        "weights): box references are ignored, boxes use their captions")
        alpha, is_fg, visual = torch.zeros(n, device=device, dtype=dtype), [False] * n, None
    if cfg.layout_pathway == "instanceassemble":
        # InstanceAssemble's layout tokens are not scaled by (1 - alpha): every box keeps the released
        # layout pathway, and alpha only routes identity (FG boxes also get modulation), so a fresh
        # identity pathway on top of the released weights changes nothing.
        tokens = _ia_tokens(adapter, layout, raw, visual, features)                         # (n, D)
        layout_tokens = tokens
    else:
        caption = has_caption = None
        if features.caption is not None and n:
            caption = features.caption.to(device, dtype)
            has_caption = torch.tensor([i.caption is not None for i in layout.instances], device=device)
        tokens = adapter.encoder(boxes, visual, caption, has_caption)                    # (n, D)
        layout_tokens = (1 - alpha)[:, None] * adapter.layout_head(tokens)                # (n, D)
    fg_ids = torch.tensor([i for i in range(n) if is_fg[i]], dtype=torch.long, device=device)
    shared = adapter.modulation.shared(tokens[fg_ids]) if cfg.identity else tokens.new_zeros(0, cfg.hidden_size)
    return CompositionState(boxes=boxes, alpha=alpha, is_fg=is_fg, fg_ids=fg_ids, tokens=tokens,
                            layout_tokens=layout_tokens, shared=shared, raw_boxes=raw)


def _visual(adapter: RefCompAdapter, refs: list[int | None], is_fg: list[bool], clip: torch.Tensor,
            features: InstanceFeatures) -> torch.Tensor:
    """Per-instance visual feature: DINOv2 CLS for FG, CLIP -> visual for BG/MG, zeros for captions.  -> (n, c)"""
    cfg = adapter.config
    n, device, dtype = len(refs), adapter.device, adapter.dtype
    visual = torch.zeros(n, cfg.visual_dim, device=device, dtype=dtype)
    need_clip = [i for i, r in enumerate(refs) if r is not None and not is_fg[i]]
    need_dino = [i for i, r in enumerate(refs) if r is not None and is_fg[i]]
    if need_clip:
        _require(features.clip_image, "CLIP-L image", "BG/MG", need_clip)
        visual[need_clip] = adapter.encoder.clip_to_visual(clip[need_clip])
    if need_dino:
        _require(features.dino, "DINOv2", "FG", need_dino)
        dino = _gather(features.dino, refs, cfg.dino_dim, device, dtype)
        visual[need_dino] = dino[need_dino]
    return visual


def _ia_tokens(adapter: RefCompAdapter, layout: Layout, raw: tuple, visual: torch.Tensor | None,
               features: InstanceFeatures) -> torch.Tensor:
    """InstanceAssemble's layout tokens from the boxes and the caption embeds.  -> (n, D)"""
    from .pathways.ia_geometry import dense_points

    ia = adapter.config.instanceassemble
    n = len(raw)
    if n == 0:
        return torch.zeros(0, adapter.config.hidden_size, device=adapter.device, dtype=adapter.dtype)
    text = features.caption
    if text is None:
        raise MissingEncoderError("the InstanceAssemble layout pathway needs the CLIP-L pooled embedding of every "
                                  "box's caption (of \"\" for a box without one), but no caption embeddings were "
                                  "given; connect the FLUX CLIP (clip_l) to Instance Encode")
    if text.shape != (n, ia.text_dim):
        raise ValueError(f"caption embeddings have shape {tuple(text.shape)}, the InstanceAssemble layout pathway "
                         f"expects ({n}, {ia.text_dim}): one CLIP-L pooled vector per box")
    points = dense_points(raw, ia.dense_k).to(adapter.device)                                 # (n, K*K*2)
    return adapter.encoder(points, text.to(adapter.device), visual)


def predict_alpha(adapter: RefCompAdapter, layout: Layout, features: InstanceFeatures) -> torch.Tensor:
    """alpha per instance (caption-only 0, manual override, else M1), without building a state.  -> (n,)
    An adapter without the identity pathway routes nothing through identity: all 0."""
    n = len(layout.instances)
    if not adapter.config.identity:
        return torch.zeros(n, device=adapter.device, dtype=adapter.dtype)
    refs = [i.ref if isinstance(i.ref, int) else None for i in layout.instances]
    boxes = torch.tensor([list(i.box) for i in layout.instances], dtype=adapter.dtype,
                         device=adapter.device).reshape(n, 4)
    clip = _gather(features.clip_image, refs, adapter.config.clip_dim, adapter.device, adapter.dtype)
    return _alpha(adapter, layout, refs, boxes, clip, features)


def _alpha(adapter: RefCompAdapter, layout: Layout, refs: list[int | None], boxes: torch.Tensor,
           clip: torch.Tensor, features: InstanceFeatures) -> torch.Tensor:
    """alpha per instance: 0 for caption-only, the manual override when set, else M1."""
    n = len(refs)
    device, dtype = boxes.device, boxes.dtype
    predicted = [i for i in range(n) if refs[i] is not None and layout.instances[i].alpha is None]
    alpha = torch.zeros(n, device=device, dtype=dtype)
    for i, inst in enumerate(layout.instances):
        if refs[i] is not None and inst.alpha is not None:
            alpha[i] = inst.alpha
    if predicted:
        _require(features.clip_image, "CLIP-L image", "alpha prediction for", predicted)
        depth = torch.zeros(n, len(DEPTHS), device=device, dtype=dtype)
        for i, inst in enumerate(layout.instances):
            if inst.depth is not None:
                depth[i, DEPTHS.index(inst.depth)] = 1.0
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        out = adapter.alpha(clip[predicted], area[predicted], depth[predicted])
        alpha = alpha.index_put((torch.tensor(predicted, device=device),), out.to(alpha.dtype))
    return alpha


def _gather(table: torch.Tensor | None, refs: list[int | None], dim: int, device: torch.device,
            dtype: torch.dtype) -> torch.Tensor:
    """Per-instance rows of a per-reference table (zeros for caption-only)."""
    out = torch.zeros(len(refs), dim, device=device, dtype=dtype)
    if table is None:
        return out
    if table.shape[-1] != dim:
        raise ValueError(f"reference features have width {table.shape[-1]}, the adapter expects {dim}; "
                         "use the encoder the adapter was trained with")
    rows = [i for i, r in enumerate(refs) if r is not None]
    if rows:
        idx = torch.tensor([refs[i] for i in rows], device=table.device)
        if int(idx.max()) >= table.shape[0]:
            raise ValueError(f"layout references image {int(idx.max())} but only {table.shape[0]} reference "
                             "features were given; load every referenced image")
        out[rows] = table[idx].to(device, dtype)
    return out


def _require(table: torch.Tensor | None, encoder: str, role: str, instances: list[int]) -> None:
    if table is None:
        raise MissingEncoderError(f"instances {instances} need {encoder} features ({role} instances) but no "
                                  f"{encoder} encoder output was given; connect the {encoder} encoder")

"""The diffusers host: RefComp on `diffusers.FluxTransformer2DModel`.

Duck-typed (diffusers is not imported here): the model must have
`transformer_blocks`, `single_transformer_blocks`, `pos_embed` and a config with
`axes_dims_rope`. Patching sets instance-level `forward`s on the blocks and one
forward pre-hook on the transformer; `remove()` (or leaving the `with`) undoes all.

Axis letters: b batch, L text tokens, N image tokens, D width.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.nn.functional as F

from ..adapter import RefCompAdapter
from ..blocks import DoubleBlockView, SingleBlockView, run_double, run_single
from ..config import RefCompConfig
from ..errors import ModelMismatchError
from ..geometry import TokenGrid
from ..rope import Rope
from ..session import RefCompSession


@dataclass(frozen=True)
class FluxDims:
    hidden_size: int
    num_double_blocks: int
    num_single_blocks: int
    num_heads: int
    axes_dim: tuple[int, ...]
    theta: float


def flux_dims(transformer: Any) -> FluxDims:
    """Read every dimension from the loaded model; refuse what is not FLUX.1."""
    name = type(transformer).__name__
    needed = ("transformer_blocks", "single_transformer_blocks", "pos_embed", "config")
    if name != "FluxTransformer2DModel" or not all(hasattr(transformer, a) for a in needed):
        raise ModelMismatchError(f"RefComp patches a diffusers FluxTransformer2DModel (FLUX.1); got {name}. "
                                 "Load a FLUX.1-dev or -schnell transformer")
    cfg = transformer.config
    return FluxDims(hidden_size=cfg.num_attention_heads * cfg.attention_head_dim,
                    num_double_blocks=len(transformer.transformer_blocks),
                    num_single_blocks=len(transformer.single_transformer_blocks),
                    num_heads=cfg.num_attention_heads, axes_dim=tuple(cfg.axes_dims_rope),
                    theta=float(getattr(transformer.pos_embed, "theta", 10000)))


def config_for(transformer: Any, **overrides: Any) -> RefCompConfig:
    """A RefCompConfig sized for this transformer."""
    d = flux_dims(transformer)
    return RefCompConfig.for_model(hidden_size=d.hidden_size, num_double_blocks=d.num_double_blocks,
                                   num_single_blocks=d.num_single_blocks, num_heads=d.num_heads, **overrides)


def _silu_linear(linear: torch.nn.Module):
    return lambda v: linear(F.silu(v))


def double_view(block: Any, heads: int) -> DoubleBlockView:
    attn = block.attn

    def img_qkv(x):
        if getattr(attn, "fused_projections", False):
            return attn.to_qkv(x).chunk(3, dim=-1)
        return attn.to_q(x), attn.to_k(x), attn.to_v(x)

    def txt_qkv(x):
        if getattr(attn, "fused_projections", False):
            return attn.to_added_qkv(x).chunk(3, dim=-1)
        return attn.add_q_proj(x), attn.add_k_proj(x), attn.add_v_proj(x)

    return DoubleBlockView(
        heads=heads, img_mod=_silu_linear(block.norm1.linear), txt_mod=_silu_linear(block.norm1_context.linear),
        img_norm1=block.norm1.norm, img_norm2=block.norm2, txt_norm1=block.norm1_context.norm,
        txt_norm2=block.norm2_context, img_qkv=img_qkv, txt_qkv=txt_qkv,
        img_qk_norm=lambda q, k: (attn.norm_q(q), attn.norm_k(k)),
        txt_qk_norm=lambda q, k: (attn.norm_added_q(q), attn.norm_added_k(k)),
        img_proj=attn.to_out[0], txt_proj=attn.to_add_out,
        img_mlp_hidden=_ff_hidden(block.ff), img_mlp_out=block.ff.net[2],
        txt_mlp_hidden=_ff_hidden(block.ff_context), txt_mlp_out=block.ff_context.net[2])


def _ff_hidden(ff: Any):
    """diffusers FeedForward up to its last linear: net[0] (proj + GELU) then net[1] (dropout)."""
    return lambda x: ff.net[1](ff.net[0](x))


def single_view(block: Any) -> SingleBlockView:
    attn = block.attn

    def qkv_mlp(x):
        if getattr(attn, "fused_projections", False):
            q, k, v = attn.to_qkv(x).chunk(3, dim=-1)
        else:
            q, k, v = attn.to_q(x), attn.to_k(x), attn.to_v(x)
        return q, k, v, block.proj_mlp(x)

    return SingleBlockView(heads=attn.heads, mod=_silu_linear(block.norm.linear), norm=block.norm.norm,
                           qkv_mlp=qkv_mlp, mlp_act=block.act_mlp,
                           qk_norm=lambda q, k: (attn.norm_q(q), attn.norm_k(k)), out=block.proj_out)


def canonical_rope(image_rotary_emb: tuple[torch.Tensor, torch.Tensor]) -> Rope:
    """diffusers' (cos, sin), each (L+N, 2d) with repeated pairs -> Rope (1, L+N, d)."""
    cos, sin = image_rotary_emb
    return Rope(cos[None, :, 0::2].float(), sin[None, :, 0::2].float())


def grid_from_ids(img_ids: torch.Tensor) -> TokenGrid:
    """The main image grid from diffusers img_ids (N, 3) = (index, row, col).
    Kontext/reference tokens (index != 0) must come after the main grid."""
    ids = img_ids[0] if img_ids.ndim == 3 else img_ids
    main = ids[:, 0] == 0
    n_main = int(main.sum())
    h, w = int(ids[main, 1].max()) + 1, int(ids[main, 2].max()) + 1
    if h * w != n_main or not bool(main[:n_main].all()):
        raise ValueError(f"RefComp: img_ids do not describe a {h}x{w} main grid followed by reference tokens")
    return TokenGrid(h, w)


class DiffusersFluxPatch:
    """Live patch of one transformer. Use `patch_flux` as a context manager."""

    def __init__(self, transformer: Any, session: RefCompSession) -> None:
        dims = flux_dims(transformer)
        if session.adapter is not None:
            session.adapter.config.check_model(hidden_size=dims.hidden_size, num_double_blocks=dims.num_double_blocks,
                                               num_single_blocks=dims.num_single_blocks)
        if session.xverse is not None and session.xverse.state.delta_block.shape[0] != dims.num_double_blocks:
            raise ModelMismatchError(f"XVerse offsets are for {session.xverse.state.delta_block.shape[0]} double "
                                     f"blocks, the model has {dims.num_double_blocks}; use FLUX.1")
        session.axes_dim, session.theta = dims.axes_dim, dims.theta
        self.transformer, self.session, self.dims = transformer, session, dims
        self.grid: TokenGrid | None = None
        self._handles: list[Any] = []
        self._patched: list[Any] = []

    def apply(self) -> "DiffusersFluxPatch":
        t = self.transformer
        self._handles.append(t.register_forward_pre_hook(self._pre_hook, with_kwargs=True))
        for i, block in enumerate(t.transformer_blocks):
            block.forward = self._double_forward(i, block)
            self._patched.append(block)
        for i, block in enumerate(t.single_transformer_blocks):
            block.forward = self._single_forward(i, block)
            self._patched.append(block)
        if self.session.xverse is not None and self.session.xverse.embed is None:
            self.session.xverse.embed = t.x_embedder
        return self

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        for block in self._patched:
            if "forward" in block.__dict__:
                del block.forward
        self._handles, self._patched = [], []

    @torch.compiler.disable
    def _pre_hook(self, module: Any, args: tuple, kwargs: dict) -> None:
        """Per-forward set-up (the grid from img_ids, the session's carry and XVerse inputs) runs eagerly:
        under torch.compile of the transformer it is one graph break before any block runs."""
        img_ids = kwargs.get("img_ids", args[4] if len(args) > 4 else None)
        if img_ids is None:
            raise ValueError("RefComp: FluxTransformer2DModel was called without img_ids")
        self.grid = grid_from_ids(img_ids)
        if self.session.xverse is None:
            self.session.begin_forward()
            return
        names = ("hidden_states", "encoder_hidden_states", "pooled_projections", "timestep", "img_ids", "txt_ids",
                 "guidance")
        given = {**dict(zip(names, args)), **kwargs}
        t, pooled, guidance = given["timestep"], given["pooled_projections"], given.get("guidance")
        dtype = given["hidden_states"].dtype
        zero = torch.zeros_like(t).to(dtype)
        embed = module.time_text_embed
        with torch.no_grad():
            cond = embed(zero, guidance.to(dtype) * 1000, pooled) if guidance is not None \
                and module.config.guidance_embeds else embed(zero, pooled)
        now = float(t.flatten()[0])
        self.session.begin_forward(cond_vec=cond, timestep=now, t0=now if self.session.t0 is None else None,
                                   latents=given["hidden_states"])

    def _double_forward(self, index: int, block: Any):
        view = double_view(block, self.dims.num_heads)
        original = type(block).forward.__get__(block)

        def forward(hidden_states, encoder_hidden_states, temb, image_rotary_emb=None, joint_attention_kwargs=None):
            rope = canonical_rope(image_rotary_emb)
            imgs, txts = [], []
            for start, stop, state in self.session.runs(hidden_states.shape[0]):
                sl = slice(start, stop)
                img, txt, vec = hidden_states[sl], encoder_hidden_states[sl], temb[sl]

                def vanilla(img=img, txt=txt, vec=vec):
                    txt_out, img_out = original(img, txt, vec, image_rotary_emb, joint_attention_kwargs)
                    return img_out, txt_out

                pathways = self.session.pathways(state, self.grid, index, (start, stop), hidden_states.device,
                                                 double=True)
                img, txt = run_double(view, img, txt, vec, rope, pathways, vanilla) if pathways else vanilla()
                imgs.append(img)
                txts.append(txt)
            return torch.cat(txts), torch.cat(imgs)

        return forward

    def _single_forward(self, index: int, block: Any):
        view = single_view(block)
        original = type(block).forward.__get__(block)

        def forward(hidden_states, encoder_hidden_states, temb, image_rotary_emb=None, joint_attention_kwargs=None):
            L = encoder_hidden_states.shape[1]
            rope = canonical_rope(image_rotary_emb)
            outs = []
            for start, stop, state in self.session.runs(hidden_states.shape[0]):
                sl = slice(start, stop)
                img, txt, vec = hidden_states[sl], encoder_hidden_states[sl], temb[sl]

                def vanilla(img=img, txt=txt, vec=vec):
                    return torch.cat(original(img, txt, vec, image_rotary_emb, joint_attention_kwargs), dim=1)

                pathways = self.session.pathways(state, self.grid, index, (start, stop), hidden_states.device,
                                                 double=False)
                outs.append(run_single(view, torch.cat([txt, img], dim=1), vec, rope, L, pathways, vanilla)
                            if pathways else vanilla())
            out = torch.cat(outs)
            return out[:, :L], out[:, L:]

        return forward


def checkpoint_current_forward(module: torch.nn.Module, *args: Any) -> Any:
    """A `gradient_checkpointing_func` that recomputes with the forward installed *now*.

    `patch_flux` is undone when the forward returns, usually before backward; diffusers'
    default re-enters `module.__call__` at recomputation time and would run the unpatched
    block. Capturing the patched forward keeps the recomputation identical (the session
    keys its feedback per block, so it is not overwritten). FLUX blocks have no hooks."""
    from torch.utils.checkpoint import checkpoint
    return checkpoint(module.forward, *args, use_reentrant=False)


def enable_gradient_checkpointing(transformer: Any) -> None:
    """Gradient checkpointing that stays correct when backward runs after `patch_flux` exits."""
    transformer.enable_gradient_checkpointing(gradient_checkpointing_func=checkpoint_current_forward)


@contextlib.contextmanager
def patch_flux(transformer: Any, session: RefCompSession) -> Iterator[DiffusersFluxPatch]:
    """Run `transformer` with RefComp for the duration of the `with` block."""
    patch = DiffusersFluxPatch(transformer, session).apply()
    try:
        yield patch
    finally:
        patch.remove()

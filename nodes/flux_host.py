"""The ComfyUI FLUX host (DESIGN §4): RefComp on `comfy.ldm.flux` through
`set_model_patch_replace(fn, "dit", "double_block" | "single_block", i)` on a clone.

- An APPLY_MODEL wrapper (or, on hosts without the wrapper API, a unet function
  wrapper) reads the latent size and sigma of each model call and puts a per-call
  `RefCompSession` into `transformer_options["refcomp"]`; block patches read it, and
  the feedback bridge travels in that session from block i to block i + 1.
- Rows of unconditioned chunks (`cond_or_uncond` = 1) get no state unless
  `apply_to_uncond`; such rows, steps outside the windows and any call without the
  context run ComfyUI's `original_block`.
- The adapter lives in a ComfyUI model patcher returned by `.models()`, so ComfyUI
  loads/offloads it with the model; so does a converted XVerse adapter.
- XVerse needs, per model call, the conditioning at t = 0, the packed latents before `img_in`
  and the timestep: a DIFFUSION_MODEL wrapper computes them from the call's own inputs with the
  model's own embedders and hands them to the session.

Axis letters: b batch, L text tokens, N image tokens, D width.
"""
from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any, Callable

import torch

from refcomp_core.blocks import run_double, run_single
from refcomp_core.controls import Controls
from refcomp_core.geometry import TokenGrid
from refcomp_core.layout import Layout
from refcomp_core.session import RefCompSession, XVerseRun
from refcomp_core.state import CompositionState, InstanceFeatures, build_state

from .flux_views import (ComfyFluxDims, canonical_rope, double_view, flux_dims, row_flags, schedule_step,
                         sigma_to_percent, single_view, token_grid)

log = logging.getLogger(__name__)

CONTEXT_KEY = "refcomp"
WRAPPER_KEY = "refcomp"


@dataclass
class XVerseApply:
    """An XVerse composition for one MODEL: the run (state, LoRA views, preset) and the ComfyUI model
    patcher that holds the XVerse adapter."""

    run: XVerseRun
    patcher: Any


@dataclass
class CallContext:
    """What one model call tells the block patches."""

    owner: str
    session: RefCompSession
    grid: TokenGrid
    key: tuple = ()


# The key of the model call in progress, set by the (uncompiled) model wrappers and checked by every block
# patch. ComfyUI's TorchCompileModel drops dynamo's guards on everything reached through
# `transformer_options`, where the per-call session travels, so a trace made inside the layout window would
# be replayed outside it. Comparing this module-level value with the call's key makes the trace guard on it
# (a guard the node keeps): a call whose decisions differ gets its own trace. Eager calls always match.
_CALL: dict[str, tuple] = {"key": ()}


def follow_call(comp: "FluxComposition", ctx: CallContext) -> None:
    """Compare the call in progress with `ctx` (the comparison is what a compiled trace guards on)."""
    if _CALL["key"] != ctx.key:
        comp.warn_once("stale", "RefComp: a FLUX block ran with the RefComp context of an earlier model call (a "
                                "node calling the diffusion model without apply_model?); it is composed as that call")


class FluxComposition:
    """One composition bound to one FLUX model: the RefComp adapter patcher (or None: XVerse only),
    layout, features, controls, and optionally XVerse."""

    def __init__(self, adapter_patcher: Any | None, layout: Layout, features: InstanceFeatures, controls: Controls,
                 dims: ComfyFluxDims, xverse: XVerseApply | None = None) -> None:
        self.uid = uuid.uuid4().hex
        self.adapter_patcher, self.xverse = adapter_patcher, xverse
        self.layout, self.features, self.controls, self.dims = layout, features, controls, dims
        self._states: dict[tuple[str, torch.dtype], CompositionState] = {}
        self._centres: dict = {}
        self._warned: set[str] = set()

    @property
    def adapter(self):
        return self.adapter_patcher.model.adapter if self.adapter_patcher is not None else None

    # --- ComfyUI patch protocol -------------------------------------------------------------
    def models(self) -> list[Any]:
        return [p for p in (self.adapter_patcher, self.xverse.patcher if self.xverse else None) if p is not None]

    def to(self, device_or_dtype: Any) -> "FluxComposition":
        """ComfyUI calls this with the load device, then the model dtype; the adapter itself
        is moved by its patcher. Cached states for other devices are dropped."""
        if isinstance(device_or_dtype, torch.device):
            self._states = {k: v for k, v in self._states.items() if k[0] == str(device_or_dtype)}
            self._centres.clear()
        return self

    # --- per sampling run / per call --------------------------------------------------------
    def state(self) -> CompositionState | None:
        """The step-independent cache, built once per adapter device/dtype (None without an adapter)."""
        adapter = self.adapter
        if adapter is None:
            return None
        key = (str(adapter.device), adapter.dtype)
        if key not in self._states:
            with torch.no_grad():
                self._states[key] = build_state(adapter, self.layout, self.features)
        return self._states[key]

    def context(self, x: torch.Tensor, sigma: torch.Tensor, transformer_options: dict,
                sampling: Any | None) -> CallContext:
        """x: (b, C, H, W) latent of this call, sigma: (b,) or scalar; sampling: the model's model_sampling.
        Every per-call number is read here, outside the diffusion model (which may be compiled)."""
        state = self.state()
        flags = row_flags(x.shape[0], transformer_options.get("cond_or_uncond"), self.controls.apply_to_uncond)
        s = float(sigma.max()) if torch.is_tensor(sigma) else float(sigma)
        percent_to_sigma = getattr(sampling, "percent_to_sigma", None)
        progress = sigma_to_percent(percent_to_sigma, s) if percent_to_sigma is not None else 0.0
        schedule = transformer_options.get("sample_sigmas")
        step = schedule_step(schedule, s)
        timestep = t0 = None
        if self.xverse is not None:          # the diffusion model's timestep, as BaseModel.apply_model makes it
            t = sampling.timestep(sigma) if hasattr(sampling, "timestep") else sigma
            timestep = float(torch.as_tensor(t).float().flatten()[0])
            t0 = float(schedule[0]) if torch.is_tensor(schedule) and schedule.numel() else None
        session = RefCompSession(self.adapter, [state if f else None for f in flags], self.controls,
                                 axes_dim=self.dims.axes_dim, theta=self.dims.theta, progress=progress,
                                 step=step[0] if step else None, num_steps=step[1] if step else None,
                                 xverse=self.xverse.run if self.xverse else None, xverse_rows=flags,
                                 timestep=timestep, t0=t0, _centres=self._centres)
        grid = token_grid(x.shape[-2], x.shape[-1], self.dims.patch_size)
        runs = tuple((a, b, id(k.state) if k.state is not None else None, k.xverse)
                     for a, b, k in session.runs(x.shape[0]))
        key = (self.uid, str(x.device), str(x.dtype), grid.h, grid.w, runs, session.phase())
        return CallContext(owner=self.uid, session=session, grid=grid, key=key)

    def apply_model_wrapper(self, executor: Any, x: torch.Tensor, t: torch.Tensor, c_concat: Any, c_crossattn: Any,
                            control: Any, transformer_options: dict, **kwargs: Any) -> torch.Tensor:
        """WrappersMP.APPLY_MODEL: x (b, C, H, W), t = sigma (b,)."""
        sampling = getattr(executor.class_obj, "model_sampling", None)
        options = dict(transformer_options)
        options[CONTEXT_KEY] = ctx = self.context(x, t, options, sampling)
        _CALL["key"] = ctx.key
        return executor(x, t, c_concat, c_crossattn, control, options, **kwargs)

    def diffusion_model_wrapper(self, executor: Any, x: torch.Tensor, timestep: torch.Tensor, context: Any,
                                y: torch.Tensor | None = None, guidance: torch.Tensor | None = None,
                                ref_latents: Any = None, control: Any = None, transformer_options: dict | None = None,
                                **kwargs: Any) -> torch.Tensor:
        """WrappersMP.DIFFUSION_MODEL: XVerse's per-call inputs, from exactly what FLUX's forward receives."""
        options = transformer_options or {}
        ctx = options.get(CONTEXT_KEY)
        if self.xverse is not None and ctx is not None and ctx.owner == self.uid:
            dm = executor.class_obj
            latents = dm.process_img(x, transformer_options=options)[0]                  # (b, N, C p p)
            ctx.session.begin_forward(cond_vec=t0_conditioning(dm, timestep, y, guidance, latents.dtype),
                                      timestep=ctx.session.timestep, latents=latents)       # read in context()
            self.xverse.run.embed = dm.img_in
        return executor(x, timestep, context, y, guidance, ref_latents, control, options, **kwargs)

    def warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message)

    def active_context(self, args: dict) -> CallContext | None:
        ctx = (args.get("transformer_options") or {}).get(CONTEXT_KEY)
        if ctx is None or ctx.owner != self.uid:
            self.warn_once("no-context", "RefComp: a FLUX call ran without RefComp's model wrapper (another node "
                                         "replaced the model function?); those calls run vanilla FLUX")
            return None
        if args.get("attn_mask") is not None:
            self.warn_once("mask", "RefComp: FLUX was called with an attention mask, which RefComp does not "
                                   "support; those calls run vanilla FLUX")
            return None
        return ctx


def t0_conditioning(dm: Any, timestep: torch.Tensor, y: torch.Tensor | None, guidance: torch.Tensor | None,
                    dtype: torch.dtype) -> torch.Tensor:
    """FLUX's `vec` for this call with the timestep set to 0 (XVerse's reference modulation), built as
    `forward_orig` builds it.  -> (b, D)"""
    from comfy.ldm.flux.layers import timestep_embedding

    vec = dm.time_in(timestep_embedding(timestep * 0, 256).to(dtype))
    if dm.params.guidance_embed and guidance is not None:
        vec = vec + dm.guidance_in(timestep_embedding(guidance, 256).to(dtype))
    if dm.vector_in is not None:
        if y is None:
            y = torch.zeros((vec.shape[0], dm.params.vec_in_dim), device=vec.device, dtype=dtype)
        vec = vec + dm.vector_in(y[:, :dm.params.vec_in_dim])
    return vec


class UnetWrapper:
    """Fallback for hosts without the wrapper API: a `model_function_wrapper` that chains any
    previous one."""

    def __init__(self, comp: FluxComposition, previous: Any, model_sampling: Any) -> None:
        self.comp, self.previous, self.model_sampling = comp, previous, model_sampling

    def __call__(self, apply_model: Callable, params: dict) -> torch.Tensor:
        x, t, c = params["input"], params["timestep"], dict(params["c"])
        options = dict(c.get("transformer_options", {}))
        options.setdefault("cond_or_uncond", params.get("cond_or_uncond"))
        options[CONTEXT_KEY] = ctx = self.comp.context(x, t, options, self.model_sampling)
        _CALL["key"] = ctx.key
        c["transformer_options"] = options
        if self.previous is not None:
            return self.previous(apply_model, {**params, "c": c})
        return apply_model(x, t, **c)

    def models(self) -> list[Any]:
        return self.comp.models() + (self.previous.models() if hasattr(self.previous, "models") else [])

    def to(self, device_or_dtype: Any) -> "UnetWrapper":
        self.comp.to(device_or_dtype)
        if hasattr(self.previous, "to"):
            self.previous = self.previous.to(device_or_dtype)
        return self


def _rows(args: dict, start: int, stop: int, batch: int) -> dict:
    """args restricted to batch rows [start, stop)."""
    if start == 0 and stop == batch:
        return args
    out = dict(args)
    for key in ("img", "txt", "vec"):
        if key in out:
            out[key] = out[key][start:stop]
    pe = out.get("pe")
    if pe is not None and pe.shape[0] == batch and batch > 1:
        out["pe"] = pe[start:stop]
    return out


class DoubleBlockPatch:
    """Replacement for double block `index` (captured module)."""

    def __init__(self, comp: FluxComposition, index: int, block: Any) -> None:
        self.comp, self.index, self.block, self.view = comp, index, block, double_view(block)

    def models(self) -> list[Any]:
        return self.comp.models()

    def to(self, device_or_dtype: Any) -> "DoubleBlockPatch":
        self.comp.to(device_or_dtype)
        return self

    def __call__(self, args: dict, extra: dict) -> dict:
        original = extra["original_block"]
        ctx = self.comp.active_context(args)
        if ctx is not None:
            follow_call(self.comp, ctx)
        img, txt, vec, pe = args["img"], args["txt"], args["vec"], args["pe"]
        if ctx is None or pe is None or not torch.is_tensor(vec) or vec.shape[0] != img.shape[0]:
            return original(args)
        session, b = ctx.session, img.shape[0]
        calls = [(s, e, session.pathways(st, ctx.grid, self.index, (s, e), img.device, double=True))
                 for s, e, st in session.runs(b)]
        if not any(p for _, _, p in calls):
            return original(args)
        rope = canonical_rope(pe)
        imgs, txts = [], []
        for s, e, pathways in calls:
            def vanilla(s=s, e=e):
                out = original(_rows(args, s, e, b))
                return out["img"], out["txt"]

            im, tx = run_double(self.view, img[s:e], txt[s:e], vec[s:e], rope.rows(s, e), pathways, vanilla) \
                if pathways else vanilla()
            imgs.append(im)
            txts.append(tx)
        return {"img": torch.cat(imgs), "txt": torch.cat(txts)}


class SingleBlockPatch:
    """Replacement for single block `index` (captured module). args["img"] is [txt | img]."""

    def __init__(self, comp: FluxComposition, index: int, block: Any) -> None:
        self.comp, self.index, self.block, self.view = comp, index, block, single_view(block)

    def models(self) -> list[Any]:
        return self.comp.models()

    def to(self, device_or_dtype: Any) -> "SingleBlockPatch":
        self.comp.to(device_or_dtype)
        return self

    def __call__(self, args: dict, extra: dict) -> dict:
        original = extra["original_block"]
        ctx = self.comp.active_context(args)
        if ctx is not None:
            follow_call(self.comp, ctx)
        x, vec, pe = args["img"], args["vec"], args["pe"]
        if ctx is None or pe is None or not torch.is_tensor(vec) or vec.shape[0] != x.shape[0]:
            return original(args)
        options = args.get("transformer_options") or {}
        txt_len = int(options["img_slice"][0])
        session, b = ctx.session, x.shape[0]
        calls = [(s, e, session.pathways(st, ctx.grid, self.index, (s, e), x.device, double=False))
                 for s, e, st in session.runs(b)]
        if not any(p for _, _, p in calls):
            return original(args)
        rope = canonical_rope(pe)
        outs = []
        for s, e, pathways in calls:
            def vanilla(s=s, e=e):
                return original(_rows(args, s, e, b))["img"]

            outs.append(run_single(self.view, x[s:e], vec[s:e], rope.rows(s, e), txt_len, pathways, vanilla)
                        if pathways else vanilla())
        return {"img": torch.cat(outs)}

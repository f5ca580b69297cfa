"""Install a RefComp composition on a ComfyUI FLUX MODEL (a clone; the input is untouched)."""
from __future__ import annotations

import logging
from typing import Any

from refcomp_core.controls import Controls
from refcomp_core.errors import RefCompError
from refcomp_core.layout import Layout
from refcomp_core.state import InstanceFeatures

from .flux_host import WRAPPER_KEY, DoubleBlockPatch, FluxComposition, SingleBlockPatch, UnetWrapper, XVerseApply
from .flux_views import flux_dims

log = logging.getLogger(__name__)

BLOCK_KINDS = ("double_block", "single_block")


def replace_conflicts(model: Any) -> list[str]:
    """Existing FLUX block replacements ("dit", double/single block) on `model`, as 'kind i'."""
    to = model.model_options.get("transformer_options", {})
    dit = to.get("patches_replace", {}).get("dit", {})
    return sorted(f"{k[0]} {k[1]}" for k in dit if isinstance(k, tuple) and k and k[0] in BLOCK_KINDS)


def _has_wrapper_api(model: Any) -> bool:
    try:
        import comfy.patcher_extension as pe
    except ImportError:
        return False
    return hasattr(model, "add_wrapper_with_key") and hasattr(getattr(pe, "WrappersMP", None), "APPLY_MODEL")


def apply_refcomp(model: Any, adapter_patcher: Any | None, layout: Layout, features: InstanceFeatures,
                  controls: Controls, xverse: XVerseApply | None = None) -> Any:
    """-> a clone of `model` (ComfyUI ModelPatcher) that composes `layout` with the adapter and/or
    XVerse (identity references; `xverse.run` built for this model).

    Raises ModelMismatchError for a non-FLUX model, CheckpointError for an adapter trained
    for other dimensions, RefCompError when another node already replaces FLUX blocks.
    """
    dims = flux_dims(model)
    if adapter_patcher is None and xverse is None:
        raise RefCompError("RefComp Apply (FLUX): connect a refcomp_model, an xverse_model, or both")
    adapter = adapter_patcher.model.adapter if adapter_patcher is not None else None
    if adapter is not None:
        adapter.config.check_model(hidden_size=dims.hidden_size, num_double_blocks=dims.num_double_blocks,
                                   num_single_blocks=dims.num_single_blocks)
        if adapter.config.num_heads != dims.num_heads:
            raise RefCompError(f"this RefComp checkpoint was trained for {adapter.config.num_heads} attention heads, "
                               f"the FLUX model has {dims.num_heads}; load a checkpoint trained for this model")
    conflicts = replace_conflicts(model)
    if conflicts:
        raise RefCompError(f"RefComp Apply (FLUX): the MODEL already has block replacements on {', '.join(conflicts)} "
                           "(another node such as a second RefComp Apply or an identity/ID adapter patched the same "
                           "FLUX blocks); RefComp replaces every FLUX block, so apply only one of them to a model")
    if xverse is not None:
        blocks = xverse.run.state.delta_block.shape[0]
        if blocks != dims.num_double_blocks:
            raise RefCompError(f"RefComp Apply (FLUX): the XVerse offsets are for {blocks} double blocks, the model has "
                               f"{dims.num_double_blocks}; XVerse was trained for FLUX.1-dev")
        if not _has_wrapper_api(model):
            raise RefCompError("RefComp Apply (FLUX): XVerse needs ComfyUI's model wrappers (ComfyUI 0.3.30 or newer); "
                               "update ComfyUI")
    if len(layout.instances) == 0 and xverse is None:
        log.warning("RefComp Apply (FLUX): the layout has no instances; the model is returned unchanged")
        return model
    if adapter is not None and len(layout.instances) > adapter.config.max_instances:
        raise RefCompError(f"RefComp Apply (FLUX): the layout has {len(layout.instances)} boxes, this checkpoint takes "
                           f"at most {adapter.config.max_instances}; remove boxes")
    comp = FluxComposition(adapter_patcher, layout, features, controls, dims, xverse=xverse)
    comp.state()   # surfaces missing encoders / bad feature widths now, not inside the sampler
    patched = model.clone()
    dm = patched.get_model_object("diffusion_model")
    for i, block in enumerate(dm.double_blocks):
        patched.set_model_patch_replace(DoubleBlockPatch(comp, i, block), "dit", "double_block", i)
    for i, block in enumerate(dm.single_blocks):
        patched.set_model_patch_replace(SingleBlockPatch(comp, i, block), "dit", "single_block", i)
    if _has_wrapper_api(patched):
        import comfy.patcher_extension as pe
        patched.add_wrapper_with_key(pe.WrappersMP.APPLY_MODEL, WRAPPER_KEY, comp.apply_model_wrapper)
        if xverse is not None:
            patched.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY, comp.diffusion_model_wrapper)
    else:
        previous = patched.model_options.get("model_function_wrapper")
        patched.set_model_unet_function_wrapper(UnetWrapper(comp, previous, patched.get_model_object("model_sampling")))
    return patched


def xverse_apply(model: Any, bundle: Any) -> XVerseApply:
    """XVerse Encode's references bound into a run for this FLUX model: the T-Mod adapter runs once here
    (ComfyUI loads it for this and may offload it after), the LoRA stays in its own patcher for sampling."""
    import comfy.model_management as mm
    from refcomp_core.xverse.compose import adapter_loras, build_run

    dims = flux_dims(model)
    xv = bundle.model
    if getattr(xv, "kind", None) != "xverse":
        raise RefCompError("Apply Composition (FLUX): the xverse input must come from XVerse Encode with an XVerse file")
    mm.load_models_gpu([xv.resampler])
    inputs = bundle.inputs
    run = build_run(xv.xverse, inputs.references, inputs.binding, inputs.preset, axes_dim=dims.axes_dim,
                    theta=dims.theta, num_double_blocks=dims.num_double_blocks, loras=adapter_loras(xv.xverse),
                    confine=inputs.confine_mask())
    return XVerseApply(run=run, patcher=xv.patcher)

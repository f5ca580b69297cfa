"""V3 nodes: Instance Encode, Alpha Predictor, Apply Composition (FLUX)."""
from __future__ import annotations

from comfy_api.latest import io

from refcomp_core.controls import Controls

from .encoding import check_widths, encode_instances
from .flux_apply import apply_refcomp
from .layout_tools import ALPHA_MODES, depth_alphas, depth_values, parse_overrides, resolved_alphas, set_alphas
from .model_check import check_box_count
from .runtime import predict_alphas, progress_bar
from .v3_inputs import CATEGORY, InstancesIO, LayoutIO, RefCompModelIO, ReferencesIO, XVerseIO


class RefCompInstanceEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RefCompInstanceEncode", display_name="Instance Encode", category=CATEGORY,
            description="Runs the frozen encoders once per reference set: CLIP-L and DINOv2-L image embeds (from "
                        "'Load CLIP Vision') and CLIP-L pooled caption embeds (from the FLUX CLIP). Outputs the "
                        "instances for Apply Composition.",
            inputs=[
                LayoutIO.Input("layout", tooltip="The layout from Layout Canvas"),
                ReferencesIO.Input("references", optional=True,
                                   tooltip="The reference set; needed when any box has a ref"),
                io.ClipVision.Input("clip_vision", optional=True,
                                    tooltip="CLIP-L vision (e.g. clip_vision_l.safetensors): BG/MG references and "
                                            "alpha prediction"),
                io.ClipVision.Input("dino", optional=True,
                                    tooltip="DINOv2-L through Load CLIP Vision (dino2 large): FG identity"),
                io.Clip.Input("clip", optional=True,
                              tooltip="The FLUX CLIP (clip_l + t5xxl); only the CLIP-L pooled caption embed is used"),
                RefCompModelIO.Input("refcomp_model", optional=True,
                                     tooltip="Optional: the adapter. Connected, it loads (and is checked against its "
                                             "FLUX model) before any encoder runs, and the box count is checked"),
            ],
            outputs=[InstancesIO.Output("instances", tooltip="Layout plus encoder features")])

    @classmethod
    def execute(cls, layout, references=None, clip_vision=None, dino=None, clip=None,
                refcomp_model=None) -> io.NodeOutput:
        from .types import RefCompInstances

        if refcomp_model is not None:
            check_box_count(layout, refcomp_model.adapter.config)
        total = (len(references) if references is not None else 0) * 2 + len(layout.instances)
        features = encode_instances(layout, references, clip_vision, dino, clip, progress_bar(total))
        return io.NodeOutput(RefCompInstances(layout=layout, features=features,
                                              num_refs=len(references) if references is not None else 0))


class RefCompAlphaPredictor(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RefCompAlphaPredictor", display_name="Alpha Predictor", category=CATEGORY,
            description="Sets alpha per instance (how much identity goes through modulation: FG >= 0.5). predicted: "
                        "the adapter's predictor; depth labels: from each box's fg/mg/bg; manual overrides: only the "
                        "list below. Alphas set on the canvas and the overrides always win.",
            inputs=[
                InstancesIO.Input("instances", tooltip="Instances from Instance Encode"),
                io.Combo.Input("mode", options=list(ALPHA_MODES), default="predicted",
                               tooltip="Where alpha comes from for boxes without a manual alpha"),
                RefCompModelIO.Input("refcomp_model", optional=True,
                                     tooltip="The adapter; needed for 'predicted'"),
                io.Float.Input("fg_alpha", default=0.8, min=0.0, max=1.0, step=0.01,
                               tooltip="alpha for boxes labelled fg (depth labels mode)"),
                io.Float.Input("mg_alpha", default=0.3, min=0.0, max=1.0, step=0.01,
                               tooltip="alpha for boxes labelled mg (depth labels mode)"),
                io.Float.Input("bg_alpha", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="alpha for boxes labelled bg (depth labels mode)"),
                io.String.Input("overrides", default="", multiline=True,
                                tooltip="Manual alphas: 'index: alpha' pairs (0: 0.9, 3: 0.1) or a JSON list"),
            ],
            outputs=[InstancesIO.Output("instances", tooltip="Instances with alpha fixed per box"),
                     io.String.Output("alphas", tooltip="alpha per instance as text (None = predicted at Apply)")])

    @classmethod
    def execute(cls, instances, mode: str = "predicted", refcomp_model=None, fg_alpha: float = 0.8,
                mg_alpha: float = 0.3, bg_alpha: float = 0.0, overrides: str = "") -> io.NodeOutput:
        if mode not in ALPHA_MODES:
            raise ValueError(f"Alpha Predictor: mode must be one of {list(ALPHA_MODES)}, got {mode!r}")
        layout = instances.layout
        manual = parse_overrides(overrides, len(layout.instances))
        layout = set_alphas(layout, {i: a for i, a in manual.items() if layout.instances[i].ref is not None})
        if mode == "depth labels":
            layout = set_alphas(layout, depth_alphas(layout, depth_values(fg_alpha, mg_alpha, bg_alpha)))
        elif mode == "predicted":
            if refcomp_model is None:
                raise ValueError("Alpha Predictor: mode 'predicted' needs the refcomp_model input; connect Load "
                                 "RefComp Model or choose 'depth labels' / 'manual overrides'")
            alphas = predict_alphas(refcomp_model.adapter, layout, instances.features)
            layout = set_alphas(layout, {i: float(alphas[i]) for i, inst in enumerate(layout.instances)
                                         if inst.ref is not None and inst.alpha is None})
        shown = resolved_alphas(layout, None)
        text = "\n".join(f"{i}: {'predicted' if a is None else f'{a:.3f}'}" for i, a in enumerate(shown))
        return io.NodeOutput(instances.with_layout(layout), text)


class RefCompApplyFLUX(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RefCompApplyFLUX", display_name="Apply Composition (FLUX)", category=CATEGORY,
            description="Patches a FLUX.1 MODEL so it composes the instances: layout pathway (Assemble-Attn, or "
                        "InstanceAssemble's released weights) inside the layout window, identity modulation inside "
                        "the modulation window; with XVerse Encode's output also XVerse's released identity pathway "
                        "on the identity boxes. Windows are start/end percent of the schedule, as for ControlNet.",
            inputs=[
                io.Model.Input("model", tooltip="A FLUX.1 model (dev, schnell or Kontext)"),
                RefCompModelIO.Input("refcomp_model", optional=True,
                                     tooltip="The adapter from Load RefComp Model (a RefComp checkpoint or converted "
                                             "InstanceAssemble weights); optional with xverse"),
                InstancesIO.Input("instances", optional=True,
                                  tooltip="Instances from Instance Encode or Alpha Predictor (with refcomp_model)"),
                io.Float.Input("strength", default=1.0, min=0.0, max=10.0, step=0.01,
                               tooltip="Scales every offset and the layout output; 0 = off"),
                io.Float.Input("layout_start_percent", default=0.0, min=0.0, max=1.0, step=0.001,
                               tooltip="Schedule percent where the layout pathway starts"),
                io.Float.Input("layout_end_percent", default=0.3, min=0.0, max=1.0, step=0.001,
                               tooltip="Schedule percent where the layout pathway ends"),
                io.Float.Input("modulation_start_percent", default=0.0, min=0.0, max=1.0, step=0.001,
                               tooltip="Schedule percent where identity modulation starts"),
                io.Float.Input("modulation_end_percent", default=1.0, min=0.0, max=1.0, step=0.001,
                               tooltip="Schedule percent where identity modulation ends"),
                io.Boolean.Input("apply_to_uncond", default=False,
                                 tooltip="Also compose the negative/unconditioned pass (off: only the positive)"),
                io.Float.Input("mask_margin", default=1.0, min=0.0, max=16.0, step=0.1,
                               tooltip="Soft margin (tokens) of FG modulation masks; 0 = hard boxes"),
                XVerseIO.Input("xverse", optional=True,
                               tooltip="XVerse Encode's identity references (released XVerse weights): the identity "
                                       "boxes keep their reference's identity"),
            ],
            outputs=[io.Model.Output("model", tooltip="The patched FLUX model")])

    @classmethod
    def execute(cls, model, refcomp_model=None, instances=None, strength: float = 1.0,
                layout_start_percent: float = 0.0, layout_end_percent: float = 0.3,
                modulation_start_percent: float = 0.0, modulation_end_percent: float = 1.0,
                apply_to_uncond: bool = False, mask_margin: float = 1.0, xverse=None) -> io.NodeOutput:
        from refcomp_core.errors import RefCompError
        from refcomp_core.layout import Layout
        from refcomp_core.state import InstanceFeatures

        from .flux_apply import xverse_apply

        controls = Controls(strength=strength, layout_window=(layout_start_percent, layout_end_percent),
                            modulation_window=(modulation_start_percent, modulation_end_percent),
                            apply_to_uncond=apply_to_uncond, mask_margin=mask_margin)
        if refcomp_model is None and xverse is None:
            raise RefCompError("Apply Composition (FLUX): connect refcomp_model + instances (layout), xverse "
                               "(XVerse Encode), or both")
        if refcomp_model is not None and instances is None:
            raise RefCompError("Apply Composition (FLUX): refcomp_model needs the instances input; connect Instance "
                               "Encode")
        layout = instances.layout if instances is not None else Layout(width=16, height=16, instances=())
        features = instances.features if instances is not None else InstanceFeatures()
        if refcomp_model is not None:
            check_widths(features, refcomp_model.adapter.config)
        xv = xverse_apply(model, xverse) if xverse is not None else None
        return io.NodeOutput(apply_refcomp(model, refcomp_model.patcher if refcomp_model is not None else None,
                                           layout, features, controls, xverse=xv))

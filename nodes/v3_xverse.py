"""V3 node: XVerse Encode (the identity references of XVerse's released weights)."""
from __future__ import annotations

from comfy_api.latest import io

from refcomp_core.errors import RefCompError
from refcomp_core.xverse.presets import PRESETS

from .runtime import progress_bar
from .types import XVerseBundle
from .v3_inputs import CATEGORY, LayoutIO, RefCompModelIO, ReferencesIO, XVerseIO
from .xverse_inputs import encode_t5, parse_id_refs, prepare


class RefCompXVerseEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RefCompXVerseEncode", display_name="XVerse Encode", category=f"{CATEGORY}/xverse",
            description="XVerse's released identity pathway (ByteDance, FLUX.1-dev): the boxes with a reference and fg "
                        "(or alpha >= 0.5) keep that reference's identity. Each such box needs a caption like 'a cat' "
                        "whose word ('cat') appears in the prompt. Encodes the prompt at exactly 128 T5 tokens as "
                        "XVerse does (use this conditioning for the sampler) and prepares the references once: CLIP "
                        "ViT-L/14 vision, the caption's T5 states and the VAE latent at 256 px. Each reference adds "
                        "256 tokens to every block (about 6 % of a 1024x1024 image's).",
            inputs=[
                RefCompModelIO.Input("xverse_model", tooltip="The converted XVerse file (refcomp convert xverse) from "
                                                             "Load RefComp Model"),
                LayoutIO.Input("layout", tooltip="The layout: boxes with a reference and fg / alpha >= 0.5 are the "
                                                 "identity references"),
                ReferencesIO.Input("references", tooltip="The reference set the boxes' ref indices point into"),
                io.Clip.Input("clip", tooltip="The FLUX CLIP (clip_l + t5xxl, DualCLIPLoader type flux)"),
                io.ClipVision.Input("clip_vision", tooltip="CLIP ViT-L/14 vision (clip_vision_l.safetensors)"),
                io.Vae.Input("vae", tooltip="The FLUX VAE (ae.safetensors)"),
                io.String.Input("prompt", multiline=True, default="",
                                tooltip="The prompt; every identity box's caption word must appear in it"),
                io.Combo.Input("preset", options=list(PRESETS), default="cli",
                               tooltip="XVerse's official settings: cli (its README command, LoRA scale 1.0) or "
                                       "demo / benchmark (LoRA scale 0.85)"),
                io.String.Input("id_refs", default="", tooltip="Reference indices that are people ('0, 2'): they use "
                                                               "XVerse's ID weight (3) instead of the object weight (5)"),
                io.Boolean.Input("confine", default=False,
                                 tooltip="Experimental (RefComp, not XVerse): in the single blocks, image tokens outside "
                                         "a reference's box cannot attend to that reference. Sample at the canvas "
                                         "size"),
            ],
            outputs=[io.Conditioning.Output("conditioning", tooltip="The prompt at 128 T5 tokens, for the sampler "
                                                                    "(add FluxGuidance as usual)"),
                     XVerseIO.Output("xverse", tooltip="The identity references, for Apply Composition")])

    @classmethod
    def execute(cls, xverse_model, layout, references, clip, clip_vision, vae, prompt: str = "", preset: str = "cli",
                id_refs: str = "", confine: bool = False) -> io.NodeOutput:
        import comfy.latent_formats

        if getattr(xverse_model, "kind", None) != "xverse":
            raise RefCompError("XVerse Encode: xverse_model is not an XVerse file; convert XVerse's release with "
                               "`refcomp convert xverse` and load that file")
        if preset not in PRESETS:
            raise RefCompError(f"XVerse Encode: preset must be one of {list(PRESETS)}, got {preset!r}")
        fmt = comfy.latent_formats.Flux()
        inputs = prepare(layout, references.images, prompt, clip=clip, clip_vision=clip_vision, vae=vae,
                         preset=PRESETS[preset], id_refs=parse_id_refs(id_refs, len(references)),
                         process_in=fmt.process_in, confine=confine,
                         progress=progress_bar(max(1, len(layout.instances))))
        cond, pooled = encode_t5(clip, prompt)
        return io.NodeOutput([[cond, {"pooled_output": pooled}]], XVerseBundle(model=xverse_model, inputs=inputs))

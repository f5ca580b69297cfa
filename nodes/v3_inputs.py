"""V3 nodes: Load RefComp Model, Load Reference Set, Layout Canvas, Layout Preview."""
from __future__ import annotations

import torch
from comfy_api.latest import io

from . import reference_preview
from . import references as refs
from .layout_tools import blank_canvas, draw_preview, empty_layout_json, parse_canvas, resolved_alphas
from .model_check import check_adapter_for_model, check_xverse_for_model
from .runtime import DTYPES, checkpoint_names, load_refcomp_model, predict_alphas, progress_bar
from .types import INSTANCES_TYPE, LAYOUT_TYPE, MODEL_TYPE, REFERENCES_TYPE, XVERSE_TYPE

CATEGORY = "RefComp"
RefCompModelIO = io.Custom(MODEL_TYPE)
ReferencesIO = io.Custom(REFERENCES_TYPE)
LayoutIO = io.Custom(LAYOUT_TYPE)
InstancesIO = io.Custom(INSTANCES_TYPE)
XVerseIO = io.Custom(XVERSE_TYPE)


class RefCompLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RefCompLoader", display_name="Load RefComp Model", category=f"{CATEGORY}/loaders",
            description="Loads a RefComp adapter checkpoint (.safetensors) from models/refcomp/ "
                        "(extra_model_paths.yaml 'refcomp:' entries work too): a RefComp checkpoint, or the "
                        "released InstanceAssemble or XVerse weights converted with `refcomp convert`.",
            inputs=[
                io.Combo.Input("ckpt_name", options=checkpoint_names(),
                               tooltip="RefComp checkpoint in models/refcomp/; it must be trained for your FLUX model"),
                io.Combo.Input("dtype", options=list(DTYPES), default="auto",
                               tooltip="Adapter weight dtype; auto = bf16 on GPUs that support it, else fp32"),
                io.Model.Input("model", optional=True,
                               tooltip="Optional: the FLUX model this adapter is for. Connected, a checkpoint for "
                                       "another model is refused here, before any encoder runs"),
            ],
            outputs=[RefCompModelIO.Output("refcomp_model", tooltip="The RefComp adapter")])

    @classmethod
    def execute(cls, ckpt_name: str, dtype: str = "auto", model=None) -> io.NodeOutput:
        loaded = load_refcomp_model(ckpt_name, dtype)
        if model is not None and loaded.kind == "xverse":
            check_xverse_for_model(loaded.info.config, model)
        elif model is not None:
            check_adapter_for_model(loaded.adapter.config, model)
        return io.NodeOutput(loaded)


class RefCompLoadReferenceSet(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RefCompLoadReferenceSet", display_name="Load Reference Set", category=CATEGORY,
            description="Builds the reference set from an IMAGE batch (optionally cut out with a MASK) and/or a "
                        "subfolder of ComfyUI's input folder (png/jpg/webp, sorted by name, transparency on white). "
                        "Batch images come first, then folder images; a box's ref is an index into this order.",
            inputs=[
                io.Image.Input("images", optional=True, tooltip="Reference images as an IMAGE batch"),
                io.Mask.Input("mask", optional=True,
                              tooltip="Optional cut-out mask for the batch (one per image or one for all)"),
                io.Combo.Input("mask_meaning", options=list(refs.MASK_MEANINGS), default=refs.MASK_BACKGROUND,
                               tooltip="Load Image's MASK marks the transparent background; segmentation masks "
                                       "mark the object"),
                io.String.Input("folder", default="",
                                tooltip="Subfolder of ComfyUI's input folder with reference images; empty = none"),
            ],
            outputs=[ReferencesIO.Output("references", tooltip="The reference set, in index order"),
                     io.Int.Output("count", tooltip="Number of references")])

    @classmethod
    def execute(cls, images: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                mask_meaning: str = refs.MASK_BACKGROUND, folder: str = "") -> io.NodeOutput:
        import folder_paths

        batch = refs.from_batch(images, mask, mask_meaning) if images is not None else None
        disk = None
        if folder.strip():
            path = refs.resolve_subfolder(folder_paths.get_input_directory(), folder)
            disk = refs.from_folder(path, progress_bar(len(refs.list_images(path))))
        result = refs.combine(batch, disk)
        if len(result) == 0:
            raise ValueError("Load Reference Set: no references; connect images and/or give a folder")
        return io.NodeOutput(result, len(result))


class RefCompLayoutCanvas(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RefCompLayoutCanvas", display_name="Layout Canvas", category=CATEGORY,
            description="Draw boxes for references and captions on a canvas; outputs the layout (layout v1 JSON "
                        "in the hidden layout_json input, normalized boxes). Each box shows its reference image: "
                        "from the connected Load Reference Set's folder at once, from the set itself after a run.",
            inputs=[
                io.String.Input("layout_json", multiline=True, default=empty_layout_json(),
                                tooltip="Layout v1 JSON written by the canvas; edit the boxes on the canvas"),
                io.Int.Input("width", default=1024, min=16, max=8192, step=16,
                             tooltip="Canvas width in pixels (set it to the image width you will generate)"),
                io.Int.Input("height", default=1024, min=16, max=8192, step=16,
                             tooltip="Canvas height in pixels (set it to the image height you will generate)"),
                io.Int.Input("num_refs", default=0, min=0, max=1000,
                             tooltip="Size of the reference set, to check box refs when no reference set is "
                                     "connected; 0 = check later"),
                ReferencesIO.Input("references", optional=True,
                                   tooltip="Optional: the reference set; box refs are checked against it and the "
                                           "canvas shows its images in the boxes"),
                io.Image.Input("background", optional=True,
                               tooltip="Optional image shown behind the boxes in the editor (display only)"),
            ],
            outputs=[LayoutIO.Output("layout", tooltip="The validated layout")])

    @classmethod
    def execute(cls, layout_json: str, width: int = 1024, height: int = 1024, num_refs: int = 0,
                references=None, background=None) -> io.NodeOutput:
        count = len(references) if references is not None else (num_refs or None)
        layout = parse_canvas(layout_json, width, height, count)
        if references is None:
            return io.NodeOutput(layout)
        import folder_paths

        thumbs = reference_preview.set_thumbnails(references, folder_paths.get_temp_directory())
        return io.NodeOutput(layout, ui={reference_preview.UI_KEY: thumbs})


class RefCompLayoutPreview(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RefCompLayoutPreview", display_name="Layout Preview", category=CATEGORY,
            description="Draws each box with its index, reference, caption, alpha and FG/BG over an image "
                        "(or a grey canvas of the layout's size).",
            inputs=[
                io.Image.Input("image", optional=True, tooltip="Image to draw on; default: a grey canvas"),
                LayoutIO.Input("layout", optional=True, tooltip="A layout to draw"),
                InstancesIO.Input("instances", optional=True,
                                  tooltip="Encoded instances (their layout is drawn; with a model, predicted alpha)"),
                RefCompModelIO.Input("refcomp_model", optional=True,
                                     tooltip="Optional adapter, to show predicted alpha and FG/BG"),
            ],
            outputs=[io.Image.Output("image", tooltip="The image with the layout drawn on it")])

    @classmethod
    def execute(cls, image=None, layout=None, instances=None, refcomp_model=None) -> io.NodeOutput:
        if instances is not None:
            layout = instances.layout
        if layout is None:
            raise ValueError("Layout Preview: connect a layout or instances")
        predicted = None
        if instances is not None and refcomp_model is not None:
            predicted = predict_alphas(refcomp_model.adapter, layout, instances.features)
        alphas = resolved_alphas(layout, predicted)
        frames = image if image is not None else blank_canvas(layout)[None]
        out = torch.stack([draw_preview(f, layout, alphas) for f in frames])
        return io.NodeOutput(out)

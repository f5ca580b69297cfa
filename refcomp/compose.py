"""Headless composition: one FLUX image from a layout and its reference images.

    images = compose("layout.json", refs="refs/", flux="FLUX.1-dev/", adapter="refcomp.safetensors",
                     clip="clip-vit-large-patch14/", dino="dinov2-large/", prompt="a picnic", seed=1)
    images = compose("layout.json", refs="refs/", flux="FLUX.1-dev/", adapter="instanceassemble_flux1.safetensors",
                     xverse="xverse_flux1.safetensors", clip="clip-vit-large-patch14/", prompt="a dog and a man")

Per sampling run the encoders run once and one `CompositionState` (RefComp / InstanceAssemble)
and one `XVerseRun` (XVerse's identity pathway, `xverse_inputs`) are built; every denoising step
reuses them. The session progress (step / steps) is advanced from FluxPipeline's
`callback_on_step_end`, which drives the layout/modulation windows.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence, Union

import torch
from PIL import Image

from refcomp_core import Layout, RefCompSession, build_state, parse_layout
from refcomp_core.errors import LayoutError, MissingEncoderError, UsageError
from refcomp_core.hosts.diffusers_flux import patch_flux
from refcomp_core.layout_import import from_instanceassemble, is_instanceassemble
from refcomp_core.values import one_line
from refcomp_core.xverse import fill_entities
from refcomp_core.xverse.identity import identity_boxes, label_alpha

from .encoders import instance_features
from .models import ComposeModels, load_models
from .options import ComposeOptions
from .preview import draw_layout
from .refs import check_reference_count, list_reference_files, load_references, to_rgb
from .xverse_inputs import build_xverse_run, check_id_refs, check_identity_boxes

log = logging.getLogger(__name__)

LayoutInput = Union[str, os.PathLike, dict, Layout]


@dataclass
class Composition:
    """The images of one run and what the adapter decided per instance."""

    images: list[Image.Image]
    layout: Layout                      # the layout at the generated size
    alpha: list[float] = field(default_factory=list)
    is_fg: list[bool] = field(default_factory=list)

    def overlay(self, index: int = 0) -> Image.Image:
        """The layout drawn over a copy of image `index`."""
        return draw_layout(self.images[index], self.layout, alpha=self.alpha or None, is_fg=self.is_fg or None)


def read_layout(source: LayoutInput, *, num_refs: int | None, max_instances: int = 50) -> Layout:
    """A Layout from a file path, JSON text, dict or Layout (validated, naming the field; errors about
    a file name it and the --layout flag). InstanceAssemble / DenseLayout JSON (`annos` with pixel
    boxes) is imported to layout v1."""
    path = None
    if isinstance(source, (str, os.PathLike)) and not (isinstance(source, str) and source.lstrip().startswith("{")):
        path = Path(source)
        if not path.is_file():
            what = "is a folder, not a layout file" if path.is_dir() else "layout file not found"
            raise FileNotFoundError(f"--layout: {what}: {path}")
        try:
            source = path.read_bytes()
        except OSError as err:
            raise LayoutError(f"--layout: cannot read {path} ({one_line(err)})") from None
    try:
        if isinstance(source, (str, bytes)):
            try:
                doc = json.loads(source)
            except (ValueError, RecursionError):
                doc = None                               # parse_layout names the JSON error
            if is_instanceassemble(doc):
                source = from_instanceassemble(doc)
        elif is_instanceassemble(source):
            source = from_instanceassemble(source)
        return parse_layout(source, num_refs=num_refs, max_instances=max_instances)
    except LayoutError as err:
        if path is None:
            raise
        raise LayoutError(f"--layout {path}: {err}") from None


def fit_size(layout: Layout, multiple: int) -> Layout:
    """The layout at the nearest size FLUX can generate (multiples of `multiple` px).
    Boxes are normalized, so they keep their place; they are validated again."""
    width = max(multiple, int(layout.width / multiple + 0.5) * multiple)
    height = max(multiple, int(layout.height / multiple + 0.5) * multiple)
    if (width, height) == (layout.width, layout.height):
        return layout
    log.info("layout size %dx%d is not a multiple of %d px; generating %dx%d (boxes are normalized and keep "
             "their place)", layout.width, layout.height, multiple, width, height)
    return parse_layout({**layout.to_dict(), "width": width, "height": height}, num_refs=None,
                        max_instances=max(50, len(layout)))


def run_composition(models: ComposeModels, layout: Layout, references: Sequence[Image.Image],
                    options: ComposeOptions) -> Composition:
    """Sample one image with RefComp and/or XVerse. `layout` must already be validated against
    `references` (`read_layout(..., num_refs=len(references))` and `check_reference_count(layout,
    len(references))`).

    With a RefComp / InstanceAssemble adapter every box goes through its layout pathway; with XVerse
    too, the boxes with a reference and alpha >= 0.5 also go through XVerse's identity pathway (alpha
    predicted by a RefComp checkpoint, else the box's manual alpha or its depth label: fg 1, else 0).
    XVerse alone takes every box with a reference."""
    pipe, adapter = models.pipe, models.adapter
    layout = fit_size(layout, multiple=pipe.vae_scale_factor * 2)
    controls = options.controls()
    length = options.sequence_length(models.xverse is not None)
    id_refs = check_id_refs(options.id_refs, len(references)) if models.xverse is not None else ()
    state, chosen = _state_and_identity(models, layout, references, id_refs)
    prompt = options.prompt or str(layout.extra.get("prompt") or "")
    if prompt and not options.prompt:
        log.info("prompt from the layout file: %r", prompt)
    xverse_run = None
    if chosen:
        prompt = _fill_entities(prompt, [layout.instances[i].caption for i in chosen])
        xverse_run = build_xverse_run(models.xverse, models.encoders, pipe, layout, chosen, references, prompt=prompt,
                                      seed=options.seed, preset=options.xverse_preset, id_refs=id_refs,
                                      confine=options.xverse_confine)
    session = RefCompSession(adapter, state, controls, step=0, num_steps=options.steps, xverse=xverse_run)
    if state is not None and adapter.config.layout_pathway == "instanceassemble" \
            and int(controls.layout_window[1] * options.steps) <= int(controls.layout_window[0] * options.steps):
        log.warning("InstanceAssemble layout: %d steps with the layout window %s leave no grounding step "
                    "(it runs for steps int(start*T) .. int(end*T) - 1); use more steps or a wider window",
                    options.steps, controls.layout_window)

    def on_step_end(_pipe: Any, step: int, _timestep: Any, _tensors: dict) -> dict:
        session.progress = min(1.0, (step + 1) / options.steps)    # the next step's position in the schedule
        session.step = step + 1
        return {}

    generator = torch.Generator(device="cpu").manual_seed(options.seed)
    kwargs = dict(prompt=prompt, height=layout.height, width=layout.width,
                  num_inference_steps=options.steps, guidance_scale=options.guidance, generator=generator,
                  max_sequence_length=length, output_type="pil")
    with torch.no_grad():
        if state is None and xverse_run is None:
            images = pipe(**kwargs).images
        else:
            with patch_flux(pipe.transformer, session):
                images = pipe(**kwargs, callback_on_step_end=on_step_end).images
    predicted = state is not None and adapter.config.identity
    alpha = state.alpha.float().tolist() if predicted else (label_alpha(layout) if chosen and adapter else [])
    is_fg = list(state.is_fg) if predicted else [i in chosen for i in range(len(layout))]
    return Composition(images=list(images), layout=layout, alpha=alpha, is_fg=is_fg if any(is_fg) else [])


def _state_and_identity(models: ComposeModels, layout: Layout, references: Sequence[Image.Image],
                        id_refs: Sequence[int]) -> tuple[Any, list[int]]:
    """The adapter's CompositionState (None without an adapter or without boxes) and the boxes XVerse keeps
    the identity of: alone every box with a reference, composed those with alpha >= 0.5 (predicted by a
    RefComp checkpoint, else the box's alpha or depth label). Boxes XVerse cannot bind are refused before
    any encoder runs whenever alpha needs no prediction."""
    adapter, xverse = models.adapter, models.xverse is not None
    predicts = adapter is not None and adapter.config.identity
    chosen: list[int] = []
    if xverse and not predicts:
        chosen = identity_boxes(layout, None if adapter is None else label_alpha(layout))
        check_identity_boxes(layout, chosen, id_refs)
    state = None
    if len(layout) == 0:
        log.warning("the layout has no instances; composing is a no-op (vanilla FLUX)")
    elif adapter is not None:
        caption_only = xverse and not predicts               # XVerse takes the references; the adapter reads captions
        state = _refcomp_state(models, layout, [] if caption_only else references, caption_only=caption_only)
        if xverse and predicts:
            chosen = identity_boxes(layout, state.alpha.float().tolist())
            check_identity_boxes(layout, chosen, id_refs)
    if xverse and len(layout) and not chosen:
        log.warning("XVerse: no box has a reference%s, so XVerse is off and the image is %s alone",
                    "" if adapter is None else " with alpha >= 0.5", "FLUX" if adapter is None else "the adapter")
    return state, chosen


def _refcomp_state(models: ComposeModels, layout: Layout, references: Sequence[Image.Image], *,
                   caption_only: bool) -> Any:
    """The RefComp / InstanceAssemble state of a layout. `caption_only`: XVerse takes the references and
    this adapter has no identity pathway, so its boxes are read as captions alone (as it does anyway)."""
    pipe, adapter = models.pipe, models.adapter
    if caption_only:
        layout = parse_layout({**layout.to_dict(), "instances": [{**i.to_dict(), "ref": None}
                                                                 for i in layout.instances]},
                              num_refs=None, max_instances=max(50, len(layout)))
    features = instance_features(models.encoders, references, layout, tokenizer=pipe.tokenizer,
                                 text_encoder=pipe.text_encoder)
    try:
        with torch.no_grad():
            return build_state(adapter, layout, features)      # once per sampling run
    except MissingEncoderError as err:
        raise MissingEncoderError(f"{err} (headless: pass --dino DIR for FG references and --clip DIR for "
                                  "alpha prediction and BG/MG references)") from None


def _fill_entities(prompt: str, captions: Sequence[str]) -> str:
    """XVerse's convention: ENT1, ENT2 ... in the prompt stand for the identity boxes' captions, in order."""
    try:
        filled = fill_entities(prompt, captions)
    except ValueError as err:
        raise UsageError(f"--prompt: {str(err).removeprefix('prompt: ')}") from None
    if filled != prompt:
        log.info("prompt with the identity captions filled in: %r", filled)
    return filled


def compose_run(layout: LayoutInput, refs: str | os.PathLike | Sequence[Image.Image] | None = None, *,
                models: ComposeModels | None = None, flux: Any = None,
                adapter: str | os.PathLike | Any = None, init_adapter: bool = False,
                clip: str | os.PathLike | None = None, dino: str | os.PathLike | None = None,
                xverse: str | os.PathLike | None = None, device: str = "cpu", dtype: str | torch.dtype = "float32",
                **options: Any) -> Composition:
    """Like `compose`, returning the full `Composition` (images, alpha, FG flags, layout)."""
    opts = ComposeOptions(**options)
    with_xverse = xverse is not None or (models is not None and models.xverse is not None)
    opts.sequence_length(with_xverse)
    from_folder = refs is None or isinstance(refs, (str, os.PathLike))
    names = [p.name for p in list_reference_files(refs)] if from_folder and refs is not None else []
    count = len(names) if from_folder else len(refs)
    parsed = read_layout(layout, num_refs=count)           # the layout is checked before any image is decoded
    check_reference_count(parsed, count, names)
    if with_xverse:
        id_refs = check_id_refs(opts.id_refs, count)
        if models is None and adapter is None and not init_adapter:      # XVerse alone: known before loading
            check_identity_boxes(parsed, identity_boxes(parsed, None), id_refs)
    references = load_references(refs) if from_folder else [to_rgb(r) for r in refs]
    if models is None:
        if flux is None:
            raise ValueError("--flux: a local diffusers FLUX.1 folder is required (or pass models=load_models(...))")
        models = load_models(flux, adapter=adapter, init_adapter=init_adapter, clip=clip, dino=dino, xverse=xverse,
                             device=device, dtype=dtype)
    return run_composition(models, parsed, references, opts)


def compose(layout: LayoutInput, refs: str | os.PathLike | Sequence[Image.Image] | None = None,
            **kwargs: Any) -> list[Image.Image]:
    """Compose with RefComp and return the PIL images.

    layout: a layout v1 file path, JSON text, dict or Layout; refs: a folder of
    png/jpg/webp (sorted by name; `ref` indexes that list) or a list of images.
    Models: `models=load_models(...)` or `flux=`, `adapter=` (or `init_adapter=True`),
    `xverse=` (a converted XVerse file), `clip=`, `dino=` folders/files plus `device`, `dtype`.
    Sampling: the fields of `ComposeOptions` (prompt, steps, guidance, seed, strength,
    layout_window, modulation_window, max_sequence_length, xverse_preset, id_refs,
    xverse_confine).
    """
    return compose_run(layout, refs, **kwargs).images

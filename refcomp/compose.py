"""Headless composition: one FLUX image from a layout and its reference images.

    images = compose("layout.json", refs="refs/", flux="FLUX.1-dev/", adapter="refcomp.safetensors",
                     clip="clip-vit-large-patch14/", dino="dinov2-large/", prompt="a picnic", seed=1)

Per sampling run the encoders run once and one `CompositionState` is built; every
denoising step reuses it. The session progress (step / steps) is advanced from
FluxPipeline's `callback_on_step_end`, which drives the layout/modulation windows.
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

from refcomp_core import Controls, Layout, RefCompSession, build_state, parse_layout
from refcomp_core.errors import LayoutError, MissingEncoderError, UsageError
from refcomp_core.hosts.diffusers_flux import patch_flux
from refcomp_core.layout_import import from_instanceassemble, is_instanceassemble
from refcomp_core.limits import MAX_GUIDANCE, MAX_STEPS
from refcomp_core.values import finite_float, one_line, show, valid_unicode

from .encoders import instance_features
from .models import ComposeModels, load_models
from .preview import draw_layout
from .refs import check_reference_count, list_reference_files, load_references, to_rgb

log = logging.getLogger(__name__)

LayoutInput = Union[str, os.PathLike, dict, Layout]


def check_int(flag: str, value: Any, low: int, high: int, hint: str = "") -> int:
    """`value` when it is an int in [low, high]; UsageError naming `flag` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise UsageError(f"{flag}: expected an integer in [{low}, {high}], got {show(value)}"
                         + (f" {hint}" if hint else ""))
    return value


def check_number(flag: str, value: Any, low: float, high: float) -> float:
    """`value` as a float when it is finite and in [low, high]; UsageError naming `flag` otherwise."""
    number = finite_float(value)
    if number is None or not low <= number <= high:
        raise UsageError(f"{flag}: expected a finite number in [{low:g}, {high:g}], got {show(value)}")
    return number


@dataclass(frozen=True)
class ComposeOptions:
    """Sampling settings. Windows are (start, end) fractions of the schedule."""

    prompt: str = ""
    steps: int = 28
    guidance: float = 3.5
    seed: int = 0
    strength: float = 1.0
    layout_window: tuple[float, float] = (0.0, 0.3)
    modulation_window: tuple[float, float] = (0.0, 1.0)
    max_sequence_length: int = 512

    def __post_init__(self) -> None:
        """Every value is checked here, naming its `refcomp compose` flag, before a model is loaded."""
        check_int("--steps", self.steps, 1, MAX_STEPS)
        check_int("--max-sequence-length", self.max_sequence_length, 1, 512, "(FLUX.1-dev 512, schnell 256)")
        check_int("--seed", self.seed, 0, 2 ** 64 - 1)
        check_number("--guidance", self.guidance, 0.0, MAX_GUIDANCE)
        check_number("--strength", self.strength, 0.0, 10.0)
        for flag, window in (("--layout-window", self.layout_window), ("--modulation-window", self.modulation_window)):
            if not isinstance(window, (tuple, list)) or len(window) != 2:
                raise UsageError(f"{flag}: expected two numbers START END, got {show(window)}")
            start = check_number(flag, window[0], 0.0, 1.0)
            if not start <= check_number(flag, window[1], 0.0, 1.0):
                raise UsageError(f"{flag}: START {start} is after END {window[1]}; both are fractions of the "
                                 "schedule, START <= END")
        if not isinstance(self.prompt, str) or not valid_unicode(self.prompt):
            raise UsageError("--prompt: expected plain text (valid Unicode)")

    def controls(self) -> Controls:
        return Controls(strength=self.strength, layout_window=tuple(self.layout_window),
                        modulation_window=tuple(self.modulation_window))


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
    """Sample one image with RefComp. `layout` must already be validated against `references`
    (`read_layout(..., num_refs=len(references))` and `check_reference_count(layout, len(references))`)."""
    pipe, adapter = models.pipe, models.adapter
    layout = fit_size(layout, multiple=pipe.vae_scale_factor * 2)
    controls = options.controls()
    state = None
    if len(layout) == 0:
        log.warning("the layout has no instances; composing is a no-op (vanilla FLUX)")
    else:
        features = instance_features(models.encoders, references, layout, tokenizer=pipe.tokenizer,
                                     text_encoder=pipe.text_encoder)
        try:
            with torch.no_grad():
                state = build_state(adapter, layout, features)      # once per sampling run
        except MissingEncoderError as err:
            raise MissingEncoderError(f"{err} (headless: pass --dino DIR for FG references and --clip DIR for "
                                      "alpha prediction and BG/MG references)") from None
    session = RefCompSession(adapter, state, controls, step=0, num_steps=options.steps)
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
    prompt = options.prompt or str(layout.extra.get("prompt") or "")
    if prompt and not options.prompt:
        log.info("prompt from the layout file: %r", prompt)
    kwargs = dict(prompt=prompt, height=layout.height, width=layout.width,
                  num_inference_steps=options.steps, guidance_scale=options.guidance, generator=generator,
                  max_sequence_length=options.max_sequence_length, output_type="pil")
    with torch.no_grad():
        if state is None:
            images = pipe(**kwargs).images
        else:
            with patch_flux(pipe.transformer, session):
                images = pipe(**kwargs, callback_on_step_end=on_step_end).images
    alpha = state.alpha.float().tolist() if state is not None else []
    return Composition(images=list(images), layout=layout, alpha=alpha,
                       is_fg=list(state.is_fg) if state is not None else [])


def compose_run(layout: LayoutInput, refs: str | os.PathLike | Sequence[Image.Image] | None = None, *,
                models: ComposeModels | None = None, flux: Any = None,
                adapter: str | os.PathLike | Any = None, init_adapter: bool = False,
                clip: str | os.PathLike | None = None, dino: str | os.PathLike | None = None,
                device: str = "cpu", dtype: str | torch.dtype = "float32", **options: Any) -> Composition:
    """Like `compose`, returning the full `Composition` (images, alpha, FG flags, layout)."""
    opts = ComposeOptions(**options)
    from_folder = refs is None or isinstance(refs, (str, os.PathLike))
    names = [p.name for p in list_reference_files(refs)] if from_folder and refs is not None else []
    count = len(names) if from_folder else len(refs)
    parsed = read_layout(layout, num_refs=count)           # the layout is checked before any image is decoded
    check_reference_count(parsed, count, names)
    references = load_references(refs) if from_folder else [to_rgb(r) for r in refs]
    if models is None:
        if flux is None:
            raise ValueError("--flux: a local diffusers FLUX.1 folder is required (or pass models=load_models(...))")
        models = load_models(flux, adapter=adapter, init_adapter=init_adapter, clip=clip, dino=dino,
                             device=device, dtype=dtype)
    return run_composition(models, parsed, references, opts)


def compose(layout: LayoutInput, refs: str | os.PathLike | Sequence[Image.Image] | None = None,
            **kwargs: Any) -> list[Image.Image]:
    """Compose with RefComp and return the PIL images.

    layout: a layout v1 file path, JSON text, dict or Layout; refs: a folder of
    png/jpg/webp (sorted by name; `ref` indexes that list) or a list of images.
    Models: `models=load_models(...)` or `flux=`, `adapter=` (or `init_adapter=True`),
    `clip=`, `dino=` folders/files plus `device`, `dtype`. Sampling: the fields of
    `ComposeOptions` (prompt, steps, guidance, seed, strength, layout_window,
    modulation_window, max_sequence_length).
    """
    return compose_run(layout, refs, **kwargs).images

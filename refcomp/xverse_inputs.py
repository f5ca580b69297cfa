"""XVerse in the headless pipeline: its converted file and its inputs, prepared from the FluxPipeline's
own parts exactly as WEIGHTS_COMPAT §2.4 says.

Per identity reference (a box with a reference image and a caption):
- the caption: T5 (the pipeline's `text_encoder_2`) last hidden states at exactly 128 tokens, padded,
  no attention mask;
- the image, white-padded to a centred square: resized (bicubic) to the CLIP vision input side (224 for
  CLIP ViT-L/14) and read as the vision tower's `hidden_states[-2]`; resized to `cond_size` (256) for
  the pipeline's VAE, encoded with a *sampled* latent (a generator seeded from --seed), shifted and
  scaled, and packed to (cond_size / 16)^2 = 256 tokens;
- its caption word bound to the prompt's T5 tokens with the pipeline's own T5 tokenizer (`bind_spans`).

Axis letters: L T5 tokens (128), M CLIP tokens (257 for ViT-L/14), T reference tokens, C channels,
N references, P image tokens of the generated grid.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from einops import rearrange
from PIL import Image

from refcomp_core import Layout, TokenGrid
from refcomp_core.errors import CheckpointError, LayoutError, MissingEncoderError, UsageError
from refcomp_core.released.xverse import XVerseInfo, load_xverse, read_xverse_info
from refcomp_core.session import XVerseRun
from refcomp_core.values import show
from refcomp_core.xverse import PRESETS, SpanBinding, SpanNotFoundError, XVerseAdapter, bind_spans
from refcomp_core.xverse.compose import XVerseReference, adapter_loras, build_run, confine_mask
from refcomp_core.xverse.identity import MAX_IDENTITY_REFS
from refcomp_core.xverse.spans import T5_LENGTH

log = logging.getLogger(__name__)

@dataclass
class XVerseModels:
    """A converted XVerse file, loaded. The adapter's resamplers stay on the CPU between runs (they run
    once per run, on the pipeline's device, then go back); its LoRA lives on the device, and `loras` are
    views of it by block and site."""

    adapter: XVerseAdapter
    info: XVerseInfo
    loras: dict
    path: str


def check_xverse_file(path: str | os.PathLike) -> XVerseInfo:
    """The header of a converted XVerse file, refused (naming --xverse) before anything loads."""
    try:
        return read_xverse_info(path)
    except CheckpointError as err:
        raise CheckpointError(f"--xverse: {err}") from None


def load_xverse_models(path: str | os.PathLike, *, pipe: Any, clip: Any, device: str | torch.device,
                       dtype: torch.dtype) -> XVerseModels:
    """Load a converted XVerse file for this FluxPipeline and CLIP vision model, checking that they fit."""
    info = check_xverse_file(path)
    check_fits(info, pipe, clip)
    try:
        adapter, info = load_xverse(path, device="cpu", dtype=dtype)
    except CheckpointError as err:
        raise CheckpointError(f"--xverse: {err}") from None
    adapter.lora.to(device)
    loras = adapter_loras(adapter)
    log.info("XVerse %s: %s parameters (resamplers of width %d / %d, LoRA on %d sites)", os.fspath(path),
             f"{sum(p.numel() for p in adapter.parameters()):,}", info.config.width, info.config.pblock_width,
             len(info.config.lora))
    return XVerseModels(adapter=adapter, info=info, loras=loras, path=os.fspath(path))


def check_fits(info: XVerseInfo, pipe: Any, clip: Any) -> None:
    """The converted file must belong to this transformer, this T5 and this CLIP vision tower."""
    from refcomp_core.hosts.diffusers_flux import flux_dims

    cfg, dims = info.config, flux_dims(pipe.transformer)
    pairs = (("--flux", "transformer hidden size", cfg.out_dim, dims.hidden_size),
             ("--flux", "double blocks", cfg.num_double_blocks, dims.num_double_blocks),
             ("--flux", "single blocks", cfg.num_single_blocks, dims.num_single_blocks),
             ("--flux", "packed latent channels", cfg.in_channels, int(pipe.transformer.config.in_channels)),
             ("--flux", "T5 width (text_encoder_2)", cfg.input_text_dim, int(pipe.text_encoder_2.config.d_model)))
    if clip is not None:
        pairs += (("--clip", "CLIP vision width", cfg.input_image_dim, int(clip.config.hidden_size)),)
    for flag, what, ours, theirs in pairs:
        if ours != theirs:
            raise CheckpointError(f"--xverse: the converted XVerse file expects a {what} of {ours}, but {flag} has "
                                  f"{theirs}; use FLUX.1-dev and CLIP ViT-L/14 (the models XVerse was trained with)")


def square_on_white(image: Image.Image) -> Image.Image:
    """The image centred on a white square of its longer side (RGB)."""
    image = image.convert("RGB")
    side = max(image.size)
    square = Image.new("RGB", (side, side), (255, 255, 255))
    square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    return square


@torch.no_grad()
def t5_states(pipe: Any, text: str, length: int = T5_LENGTH) -> torch.Tensor:
    """(1, L, C) last hidden states of the pipeline's T5 for `text` at exactly `length` tokens (no mask)."""
    ids = pipe.tokenizer_2(text, padding="max_length", max_length=length, truncation=True,
                           return_tensors="pt").input_ids
    return pipe.text_encoder_2(ids.to(pipe.text_encoder_2.device))[0]


def t5_tokenize(pipe: Any, length: int = T5_LENGTH):
    """The pipeline's T5 tokenizer as `bind_spans` reads it: text -> (ids, attention mask) at `length`."""
    def tokenize(text: str) -> tuple[list[int], list[int]]:
        enc = pipe.tokenizer_2(text, padding="max_length", max_length=length, truncation=True)
        return enc["input_ids"], enc["attention_mask"]
    return tokenize


@torch.no_grad()
def clip_penultimate(model: Any, processor: Any, square: Image.Image) -> torch.Tensor:
    """(1, M, C) CLIP vision `hidden_states[-2]` of a square image resized (bicubic) to the tower's input side,
    then rescaled and normalized by its processor (no resize, no crop)."""
    side = int(model.config.image_size)
    pixels = processor(images=[square.resize((side, side), Image.BICUBIC)], do_resize=False, do_center_crop=False,
                       return_tensors="pt")["pixel_values"]
    out = model(pixel_values=pixels.to(device=model.device, dtype=model.dtype), output_hidden_states=True)
    return out.hidden_states[-2]


@torch.no_grad()
def reference_latents(pipe: Any, square: Image.Image, cond_size: int, generator: torch.Generator) -> torch.Tensor:
    """(T, C) packed VAE latents of a square image at cond_size px: a sampled latent, shifted and scaled as
    FLUX's latents are, packed in 2 x 2 patches (T = (cond_size / 16)^2)."""
    vae = pipe.vae
    pixels = np.asarray(square.resize((cond_size, cond_size), Image.BICUBIC), dtype=np.float32) / 255.0
    x = rearrange(torch.from_numpy(pixels), "h w c -> 1 c h w") * 2 - 1                    # [-1, 1]
    z = vae.encode(x.to(device=vae.device, dtype=vae.dtype)).latent_dist.sample(generator=generator)
    z = (z - vae.config.shift_factor) * vae.config.scaling_factor
    return rearrange(z, "1 c (h p) (w q) -> (h w) (c p q)", p=2, q=2)


def check_identity_boxes(layout: Layout, chosen: Sequence[int], id_refs: Sequence[int]) -> None:
    """Refuse what XVerse cannot bind, before any encoder runs: too many identity references, a box without
    a caption; warn about --id-refs that no identity box uses."""
    if len(chosen) > MAX_IDENTITY_REFS:
        raise LayoutError(f"layout: {len(chosen)} boxes go through XVerse's identity pathway (instances "
                          f"{list(chosen)}: a reference and alpha >= 0.5), more than {MAX_IDENTITY_REFS}; each costs "
                          f"{PRESETS['cli'].reference_tokens} tokens in every block. Drop the reference of the "
                          "others (with --adapter, depth 'bg' or alpha 0 also keeps them in the layout only)")
    for i in chosen:
        if not layout.instances[i].caption or not layout.instances[i].caption.strip():
            raise LayoutError(f"layout.instances[{i}].caption: XVerse binds a reference to its caption's word in the "
                              "prompt, and this box has a reference but no caption; caption it (e.g. 'a dog') and "
                              "write the word into the prompt")
    unused = sorted(set(id_refs) - {layout.instances[i].ref for i in chosen})
    if unused:
        log.warning("--id-refs %s: no identity box uses these references (they keep weight_ip)", unused)


def build_xverse_run(xv: XVerseModels, encoders: Any, pipe: Any, layout: Layout, chosen: Sequence[int],
                     references: Sequence[Image.Image], *, prompt: str, seed: int, preset: str,
                     id_refs: Sequence[int], confine: bool) -> XVerseRun:
    """The XVerseRun of the identity boxes `chosen` of `layout` (at the generated size) for `prompt`."""
    from refcomp_core.hosts.diffusers_flux import flux_dims

    settings = PRESETS[preset]
    if encoders.clip is None:
        raise MissingEncoderError("--clip: XVerse reads each reference with CLIP ViT-L/14 vision (its penultimate "
                                  "hidden states); pass --clip DIR (e.g. openai/clip-vit-large-patch14)")
    if pipe.vae_scale_factor * 2 * (settings.cond_size // 16) != settings.cond_size:
        raise CheckpointError(f"--flux: the VAE downsamples by {pipe.vae_scale_factor}, XVerse's references need "
                              "FLUX.1's 8 (16 px per token)")
    binding = bind_prompt(pipe, layout, chosen, prompt)
    refs = reference_inputs(pipe, encoders, layout, chosen, references, cond_size=settings.cond_size, seed=seed,
                            id_refs=id_refs)
    grid = TokenGrid.from_pixels(layout.height, layout.width)
    mask = confine_mask([layout.instances[i].box for i in chosen], grid) if confine else None
    dims, device = flux_dims(pipe.transformer), pipe.transformer.device
    xv.adapter.net.to(device)
    xv.adapter.net2.to(device)
    try:
        run = build_run(xv.adapter, refs, binding, settings, axes_dim=dims.axes_dim, theta=dims.theta,
                        num_double_blocks=dims.num_double_blocks, loras=xv.loras, confine=mask)
    finally:
        xv.adapter.net.to("cpu")                # offloaded: the offsets are computed once per run
        xv.adapter.net2.to("cpu")
    log.info("XVerse (%s preset): %d identity reference(s) %s, %d tokens each: %d reference tokens in every block "
             "beside %d image and %d prompt tokens%s", preset, len(refs),
             [f"instances[{i}] {span.word!r}{' (ID)' if r.is_id else ''}"
              for i, span, r in zip(chosen, binding.spans, refs)],
             settings.reference_tokens, settings.reference_tokens * len(refs), grid.n, T5_LENGTH,
             "; confined to their boxes in the single blocks (experimental)" if confine else "")
    return run


def bind_prompt(pipe: Any, layout: Layout, chosen: Sequence[int], prompt: str) -> SpanBinding:
    """The identity boxes' caption words bound to the prompt's T5 tokens (pipeline tokenizer, 128 tokens);
    SpanNotFoundError naming the box, its caption and the word otherwise."""
    captions = [layout.instances[i].caption for i in chosen]
    try:
        return bind_spans(prompt, captions, t5_tokenize(pipe))
    except SpanNotFoundError as err:
        where = f"layout.instances[{chosen[err.reference]}].caption {show(captions[err.reference])}"
        if err.where != "prompt":
            raise SpanNotFoundError(f"{where}: {err}", reference=err.reference, word=err.word, where=err.where) \
                from None
        raise SpanNotFoundError(f"{where}: its word {err.word!r} is not in the prompt {show(prompt)} as the same T5 "
                                f"tokens (within the first {T5_LENGTH}); XVerse binds each identity reference to its "
                                "word in the prompt: write the word into the prompt (ENT1, ENT2 ... stand for the "
                                "identity boxes' captions) or change the caption", reference=err.reference,
                                word=err.word) from None


def reference_inputs(pipe: Any, encoders: Any, layout: Layout, chosen: Sequence[int],
                     references: Sequence[Image.Image], *, cond_size: int, seed: int,
                     id_refs: Sequence[int]) -> list[XVerseReference]:
    """Each identity box's caption states, CLIP states and packed VAE latents, in box order (one generator
    seeded with `seed` samples every reference's latent in turn)."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    out = []
    for i in chosen:
        inst = layout.instances[i]
        square = square_on_white(references[inst.ref])
        out.append(XVerseReference(txt=t5_states(pipe, inst.caption),
                                   img=clip_penultimate(encoders.clip, encoders.clip_processor, square),
                                   latents=reference_latents(pipe, square, cond_size, generator),
                                   is_id=inst.ref in id_refs))
    return out


def check_id_refs(values: Sequence[int], num_refs: int) -> tuple[int, ...]:
    """--id-refs: reference indices (a layout `ref`) in [0, num_refs)."""
    bad = [v for v in values if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < max(num_refs, 0)]
    if bad:
        what = "is not a reference index" if len(bad) == 1 else "are not reference indices"
        raise UsageError(f"--id-refs: {', '.join(map(str, bad))} {what}; there are {num_refs} reference image(s), "
                         f"indexed 0..{num_refs - 1} as the layout's `ref`")
    return tuple(sorted(set(values)))

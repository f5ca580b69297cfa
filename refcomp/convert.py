"""`refcomp convert`: released weights of the methods RefComp fuses -> one RefComp checkpoint.

    refcomp convert instanceassemble --layout flux/layout.pth --lora flux/pytorch_lora_weights.safetensors \
        --out models/refcomp/instanceassemble_flux1.safetensors
    refcomp convert xverse --adapter XVerse/modulation_adapter --lora XVerse/pytorch_lora_weights.safetensors \
        --out models/refcomp/xverse_flux1.safetensors

The output loads in ComfyUI (Load RefComp Model, from models/refcomp/) and in `refcomp compose --adapter`.
This command is the only place a pickle (`layout.pth`, a `diffusion_pytorch_model.bin`) is ever read,
with `torch.load(weights_only=True)`.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from refcomp_core.values import one_line, show

log = logging.getLogger("refcomp")


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("convert", help="convert released InstanceAssemble or XVerse weights into a RefComp file",
                       description="Convert released weights once into one RefComp .safetensors file.")
    methods = p.add_subparsers(dest="method", metavar="METHOD", required=True)
    ia = methods.add_parser("instanceassemble", help="InstanceAssemble's FLUX.1 layout.pth + LoRA",
                            description="InstanceAssemble (FireRedTeam) FLUX.1 weights: flux/layout.pth and "
                                        "flux/pytorch_lora_weights.safetensors from its release.")
    ia.add_argument("--layout", required=True, help="InstanceAssemble's flux/layout.pth (read weights-only)")
    ia.add_argument("--lora", required=True, help="InstanceAssemble's flux/pytorch_lora_weights.safetensors")
    ia.add_argument("--out", required=True, help="output RefComp checkpoint (.safetensors), e.g. "
                                                 "ComfyUI/models/refcomp/instanceassemble_flux1.safetensors")
    ia.add_argument("--transformer-config", help=TRANSFORMER_CONFIG_HELP)
    xv = methods.add_parser("xverse", help="XVerse's FLUX.1-dev modulation adapter + LoRA",
                            description="XVerse (ByteDance) FLUX.1-dev weights: the modulation_adapter/ folder "
                                        "(config.json + diffusion_pytorch_model.safetensors or .bin) and "
                                        "pytorch_lora_weights.safetensors from its release.")
    xv.add_argument("--adapter", required=True, help="XVerse's modulation_adapter/ folder (config.json + weights; "
                                                     "a .bin is read weights-only)")
    xv.add_argument("--lora", required=True, help="XVerse's pytorch_lora_weights.safetensors")
    xv.add_argument("--out", required=True, help="output file (.safetensors), e.g. "
                                                 "ComfyUI/models/refcomp/xverse_flux1.safetensors")
    xv.add_argument("--transformer-config", help=TRANSFORMER_CONFIG_HELP)
    return p


TRANSFORMER_CONFIG_HELP = ("a diffusers FLUX transformer config.json to convert for (default: FLUX.1-dev/-schnell, "
                           "hidden 3072, 19 + 38 blocks)")


def check_out(path: str, example: str = "instanceassemble.safetensors") -> Path:
    """--out: a .safetensors file path in an existing folder (UsageError naming the flag otherwise)."""
    from refcomp_core.errors import UsageError

    out = Path(path)
    if out.suffix != ".safetensors":
        raise UsageError(f"--out: {out} must end in .safetensors (RefComp writes safetensors only)")
    if out.is_dir():
        raise UsageError(f"--out: {out} is a folder; give a file name such as {out / example}")
    if not out.parent.is_dir():
        raise UsageError(f"--out: the folder {out.parent} does not exist; create it first")
    return out


def transformer_config(args: argparse.Namespace) -> tuple[Any, int]:
    """The (TargetSpec, packed input channels) of --transformer-config, or FLUX.1's when not given.
    UsageError naming the flag for a file that is not a diffusers FluxTransformer2DModel config.json."""
    from refcomp_core.errors import CheckpointError, UsageError
    from refcomp_core.limits import MAX_FILE_DIM
    from refcomp_core.released.instanceassemble import FLUX1, TargetSpec
    from refcomp_core.released.xverse import FLUX1_IN_CHANNELS

    if not args.transformer_config:
        return FLUX1, FLUX1_IN_CHANNELS
    path = Path(args.transformer_config)
    try:
        config = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError) as err:
        raise UsageError(f"--transformer-config {path}: not a readable config.json ({one_line(err)})") from None
    try:
        spec = TargetSpec.from_diffusers_config(config)
    except CheckpointError as err:
        raise UsageError(f"--transformer-config {path}: {err}") from None
    channels = config.get("in_channels")
    if isinstance(channels, bool) or not isinstance(channels, int) or not 0 < channels <= MAX_FILE_DIM:
        raise UsageError(f"--transformer-config {path}: in_channels must be an integer in [1, {MAX_FILE_DIM}], got "
                         f"{show(channels)}; not a diffusers FluxTransformer2DModel config")
    return spec, channels


def run(args: argparse.Namespace) -> int:
    if args.method == "xverse":
        return run_xverse(args)
    from refcomp_core.released.instanceassemble import convert

    out = check_out(args.out)
    spec, _ = transformer_config(args)
    adapter = convert(layout=args.layout, lora=args.lora, out=out, spec=spec)
    cfg = adapter.config.instanceassemble
    ranks = sorted({r for r, _ in cfg.lora.values()})
    log.info("wrote %s: InstanceAssemble layout pathway for hidden size %d (layout blocks %s + single %s, "
             "%d LoRA sites, rank %s)", out, spec.hidden_size, list(cfg.double_blocks), list(cfg.single_blocks),
             len(cfg.lora), ranks[0] if len(ranks) == 1 else ranks)
    return 0


def run_xverse(args: argparse.Namespace) -> int:
    from refcomp_core.released.xverse import convert

    out = check_out(args.out, "xverse_flux1.safetensors")
    spec, in_channels = transformer_config(args)
    info = convert(adapter_dir=args.adapter, lora=args.lora, out=out, spec=spec, in_channels=in_channels)
    cfg = info.config
    ranks = sorted({r for r, _ in cfg.lora.values()})
    log.info("wrote %s: XVerse adapter (width %d / %d, %d + %d resampler layers) and %d LoRA sites (rank %s) for "
             "hidden size %d, %d double blocks", out, cfg.width, cfg.pblock_width, cfg.layers, cfg.pblock_layers,
             len(cfg.lora), ranks[0] if len(ranks) == 1 else ranks, cfg.out_dim, cfg.num_double_blocks)
    return 0

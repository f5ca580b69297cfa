"""`refcomp convert`: released weights of the methods RefComp fuses -> one RefComp checkpoint.

    refcomp convert instanceassemble --layout flux/layout.pth --lora flux/pytorch_lora_weights.safetensors \
        --out models/refcomp/instanceassemble_flux1.safetensors

The output loads in ComfyUI (Load RefComp Model, from models/refcomp/) and in `refcomp compose --adapter`.
This command is the only place a pickle (`layout.pth`) is ever read, with `torch.load(weights_only=True)`.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

log = logging.getLogger("refcomp")


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("convert", help="convert released InstanceAssemble weights into a RefComp checkpoint",
                       description="Convert released weights once into one RefComp .safetensors file.")
    methods = p.add_subparsers(dest="method", metavar="METHOD", required=True)
    ia = methods.add_parser("instanceassemble", help="InstanceAssemble's FLUX.1 layout.pth + LoRA",
                            description="InstanceAssemble (FireRedTeam) FLUX.1 weights: flux/layout.pth and "
                                        "flux/pytorch_lora_weights.safetensors from its release.")
    ia.add_argument("--layout", required=True, help="InstanceAssemble's flux/layout.pth (read weights-only)")
    ia.add_argument("--lora", required=True, help="InstanceAssemble's flux/pytorch_lora_weights.safetensors")
    ia.add_argument("--out", required=True, help="output RefComp checkpoint (.safetensors), e.g. "
                                                 "ComfyUI/models/refcomp/instanceassemble_flux1.safetensors")
    ia.add_argument("--transformer-config", help="a diffusers FLUX transformer config.json to convert for "
                                                 "(default: FLUX.1-dev/-schnell, hidden 3072, 19 + 38 blocks)")
    return p


def check_out(path: str) -> Path:
    out = Path(path)
    if out.suffix != ".safetensors":
        raise ValueError(f"--out: {out} must end in .safetensors (RefComp writes safetensors only)")
    if out.is_dir():
        raise ValueError(f"--out: {out} is a folder; give a file name such as {out / 'instanceassemble.safetensors'}")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"--out: the folder {out.parent} does not exist; create it first")
    return out


def run(args: argparse.Namespace) -> int:
    from refcomp_core.errors import CheckpointError
    from refcomp_core.released.instanceassemble import FLUX1, TargetSpec, convert

    out = check_out(args.out)
    spec = FLUX1
    if args.transformer_config:
        path = Path(args.transformer_config)
        try:
            spec = TargetSpec.from_diffusers_config(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CheckpointError(f"--transformer-config {path}: not a readable config.json ({err})") from None
    adapter = convert(layout=args.layout, lora=args.lora, out=out, spec=spec)
    cfg = adapter.config.instanceassemble
    ranks = sorted({r for r, _ in cfg.lora.values()})
    log.info("wrote %s: InstanceAssemble layout pathway for hidden size %d (layout blocks %s + single %s, "
             "%d LoRA sites, rank %s)", out, spec.hidden_size, list(cfg.double_blocks), list(cfg.single_blocks),
             len(cfg.lora), ranks[0] if len(ranks) == 1 else ranks)
    return 0

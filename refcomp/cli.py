"""The `refcomp` console command.

    refcomp compose --layout L.json --refs DIR --flux DIR --adapter FILE --clip DIR --dino DIR --out out.png
    refcomp compose --layout L.json --refs DIR --flux DIR [--adapter IA.safetensors] --xverse XV.safetensors \
        --clip DIR --out out.png
    refcomp convert instanceassemble --layout layout.pth --lora LORA.safetensors --out FILE.safetensors
    refcomp convert xverse --adapter modulation_adapter/ --lora LORA.safetensors --out FILE.safetensors
    refcomp train ...          -> training.train:main(argv)
    refcomp prepare-data ...   -> training.prepare_data:main(argv)
    refcomp demo|toy ...       -> refcomp.toy.cli:main(argv), else refcomp.toy:main(argv)

Errors are one line on stderr, never a traceback (set REFCOMP_DEBUG=1 for one).
Exit codes: 0 done; 2 bad input or usage (the message names the flag or file, what was
wrong and how to fix it); 1 anything else (a bug or the machine: disk, memory);
130 interrupted. Every path is local; nothing is downloaded.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable, NoReturn, Sequence

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger("refcomp")

# Subcommands owned by other packages: candidate modules (first one with `main(argv)` wins), help.
# Imported only when used, so `refcomp compose` never needs the training or toy dependencies.
PASSTHROUGH: dict[str, tuple[tuple[str, ...], str]] = {
    "train": (("training.train",), "train a RefComp adapter (see `refcomp train --help`)"),
    "prepare-data": (("training.prepare_data",), "build a training manifest from images"),
    "demo": (("refcomp.toy.cli", "refcomp.toy"), "the toy world demo (same as `toy`)"),
    "toy": (("refcomp.toy.cli", "refcomp.toy"), "the toy world: train and evaluate RefComp on synthetic scenes"),
}


# Arguments put before the user's for a pass-through subcommand: `refcomp demo ARGS` is the
# toy CLI's `demo ARGS`, so `refcomp demo --help` shows the demo's own help.
PASSTHROUGH_PREFIX: dict[str, tuple[str, ...]] = {"demo": ("demo",)}
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp")
XVERSE_PRESETS: tuple[str, ...] = ("cli", "demo", "benchmark")    # = refcomp_core.xverse.PRESETS (no torch import)
EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED = 2, 1, 130


class CommandUnavailable(RuntimeError):
    """A pass-through subcommand whose module is not installed."""


class Parser(argparse.ArgumentParser):
    """argparse that raises UsageError (one line, exit 2 from `main`) instead of printing the
    usage block and exiting."""

    def error(self, message: str) -> NoReturn:
        from refcomp_core.errors import UsageError

        raise UsageError(f"{message} (see `{self.prog} --help`)")


def _fraction(text: str) -> float:
    """A window bound: a number in [0, 1] (argparse names the flag in the error)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is outside [0, 1] (fractions of the schedule)")
    return value


def _indices(text: str) -> tuple[int, ...]:
    """A comma-separated list of reference indices, e.g. '0,2' (argparse names the flag in the error)."""
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of reference indices such as "
                                         "0,2") from None
    if any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: reference indices are >= 0")
    return values


def compose_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("compose", help="compose one image from a layout and reference images",
                       description="Compose one FLUX image with RefComp from local model folders. Writes OUT and "
                                   "OUT_layout.png (the layout drawn over the result).")
    p.add_argument("--layout", required=True, help="layout v1 JSON file")
    p.add_argument("--refs", help="folder of reference images (png/jpg/webp), sorted by file name; "
                                  "a layout `ref` indexes that list. Omit for caption-only layouts")
    p.add_argument("--flux", required=True, help="local diffusers FLUX.1 folder (FluxPipeline layout)")
    adapter = p.add_mutually_exclusive_group()
    adapter.add_argument("--adapter", help="RefComp checkpoint or converted InstanceAssemble weights (.safetensors)")
    adapter.add_argument("--init-adapter", action="store_true",
                         help="use a freshly initialised adapter instead: equals vanilla FLUX (for testing)")
    p.add_argument("--xverse", help="converted XVerse weights (`refcomp convert xverse`): identity of the boxes with "
                                    "a reference (with --adapter: those with alpha >= 0.5; alpha from a RefComp "
                                    "checkpoint, else the box's alpha or depth: fg 1, else 0); needs --clip")
    p.add_argument("--xverse-preset", choices=XVERSE_PRESETS, default="cli",
                   help="settings of XVerse's entry points: cli (global LoRA scale 1.0, default), demo or benchmark "
                        "(0.85)")
    p.add_argument("--id-refs", type=_indices, default=(), metavar="I,J",
                   help="references (layout `ref` indices) that are people: XVerse's weight_id (3) instead of "
                        "weight_ip (5)")
    p.add_argument("--xverse-confine", action="store_true",
                   help="experimental, not in XVerse: each identity reference is only seen from the image tokens "
                        "inside its box (single blocks)")
    p.add_argument("--clip", help="local CLIP-L folder (CLIPVisionModelWithProjection + processor); needed for "
                                  "alpha prediction, BG/MG references and XVerse (ViT-L/14)")
    p.add_argument("--dino", help="local DINOv2 folder (Dinov2Model + processor); needed for FG references")
    p.add_argument("--out", required=True, help="output image path (.png); the overlay goes to OUT_layout.png")
    p.add_argument("--prompt", default="", help="global prompt")
    p.add_argument("--steps", type=int, default=28, help="sampling steps (default 28)")
    p.add_argument("--guidance", type=float, default=3.5, help="FLUX distilled guidance (default 3.5)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    p.add_argument("--strength", type=float, default=1.0, help="RefComp strength in [0, 10] (default 1)")
    p.add_argument("--layout-window", nargs=2, type=_fraction, default=(0.0, 0.3),
                   metavar=("START", "END"), help="fractions of the schedule with the layout branch (0 0.3)")
    p.add_argument("--modulation-window", nargs=2, type=_fraction, default=(0.0, 1.0),
                   metavar=("START", "END"), help="fractions of the schedule with FG modulation (0 1)")
    p.add_argument("--max-sequence-length", type=int, default=None,
                   help="T5 tokens (default 512; dev 512, schnell 256; exactly 128 with --xverse)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                   help="default: bfloat16 on cuda, float32 on cpu")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="refcomp", description="RefComp: compose one FLUX image from many "
                                                                 "boxed references.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    compose_parser(sub)
    from .convert import add_parser as convert_parser
    convert_parser(sub)
    for name, (_, help_text) in PASSTHROUGH.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def _entry_point(name: str) -> Callable[[list[str]], int | None]:
    """`main` of the first candidate module of a pass-through subcommand."""
    candidates, _ = PASSTHROUGH[name]
    for module_name in candidates:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name and module_name.startswith(err.name):
                continue                 # this candidate does not exist; try the next
            raise CommandUnavailable(f"`refcomp {name}` needs the Python package {err.name!r} (imported by "
                                     f"{module_name}); pip install it") from None
        entry = getattr(module, "main", None)
        if callable(entry):
            return entry
    raise CommandUnavailable(f"`refcomp {name}` is unavailable: none of {', '.join(candidates)} is installed "
                             "with a main(argv) entry point; install the full RefComp package (pip install -e .)")


def _passthrough(name: str, argv: list[str]) -> int:
    return int(_entry_point(name)([*PASSTHROUGH_PREFIX.get(name, ()), *argv]) or 0)


def check_output(out: Path) -> None:
    """Refuse an --out that cannot be written, before any model is loaded."""
    from refcomp_core.errors import UsageError

    for path in (out, overlay_path(out)):
        if path.is_dir():
            raise UsageError(f"--out: {path} is a folder; give an image file path such as {path / 'out.png'}")
    if out.suffix.lower() not in IMAGE_SUFFIXES:
        raise UsageError(f"--out: {out} needs an image suffix (.png, .jpg, .webp)")
    folder = next((p for p in out.parents if p.exists()), Path("."))
    if not folder.is_dir():
        raise UsageError(f"--out: {folder} is a file, so {out} cannot be created; choose another folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"--out: the folder {folder} is not writable; choose another folder")


def overlay_path(out: Path) -> Path:
    return out.with_name(f"{out.stem}_layout.png")


def save_image(image: "Image.Image", path: Path) -> None:
    """Save atomically: a killed run leaves the old image or none, never half of one."""
    from PIL import Image

    from refcomp_core.atomic import atomic_path

    with atomic_path(path) as tmp:
        image.save(tmp, format=Image.registered_extensions()[path.suffix.lower()])


def run_compose(args: argparse.Namespace) -> int:
    import torch

    from refcomp_core.errors import UsageError

    from .compose import compose_run

    if not (args.adapter or args.init_adapter or args.xverse):
        raise UsageError("one of --adapter, --init-adapter or --xverse is required (see `refcomp compose --help`)")
    out = Path(args.out)
    check_output(out)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available; use --device cpu")
    dtype = args.dtype or ("bfloat16" if device == "cuda" else "float32")
    result = compose_run(args.layout, args.refs, flux=args.flux, adapter=args.adapter,
                         init_adapter=args.init_adapter, clip=args.clip, dino=args.dino, xverse=args.xverse,
                         device=device, dtype=dtype, prompt=args.prompt, steps=args.steps, guidance=args.guidance,
                         seed=args.seed, strength=args.strength, layout_window=tuple(args.layout_window),
                         modulation_window=tuple(args.modulation_window),
                         max_sequence_length=args.max_sequence_length, xverse_preset=args.xverse_preset,
                         id_refs=tuple(args.id_refs), xverse_confine=args.xverse_confine)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_image(result.images[0], out)
    save_image(result.overlay(), overlay_path(out))
    log.info("wrote %s and %s", out, overlay_path(out))
    return 0


def _setup_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    logging.getLogger("refcomp").setLevel(logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `refcomp` console script; returns the exit code. Every error is
    one line (REFCOMP_DEBUG=1 re-raises it with its traceback)."""
    from refcomp_core.errors import RefCompError

    args_list = list(sys.argv[1:] if argv is None else argv)
    _setup_logging()
    try:
        if args_list and args_list[0] in PASSTHROUGH:
            return _passthrough(args_list[0], args_list[1:])
        args = build_parser().parse_args(args_list)
        if args.command == "convert":
            from .convert import run as run_convert
            return run_convert(args)
        return run_compose(args)
    except (RefCompError, ValueError, FileNotFoundError, NotADirectoryError, CommandUnavailable) as err:
        return _fail(err, EXIT_BAD_INPUT, "error: ")
    except KeyboardInterrupt as err:
        return _fail(err, EXIT_INTERRUPTED, "interrupted")
    except Exception as err:         # a bug or the machine (disk, memory): still one line, never a traceback
        return _fail(err, EXIT_FAILED, f"failed ({type(err).__name__}): ")


def _fail(err: BaseException, code: int, prefix: str) -> int:
    if os.environ.get("REFCOMP_DEBUG"):
        raise err
    text = " ".join(str(err).split())
    hint = "" if code == EXIT_BAD_INPUT else " (set REFCOMP_DEBUG=1 for the traceback)"
    log.error("%s%s%s", prefix, text, hint)
    return code


if __name__ == "__main__":
    sys.exit(main())

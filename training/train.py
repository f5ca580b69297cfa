"""`refcomp train --config CONFIG.yaml` / `python -m training.train` (also under
`accelerate launch`). Step 1 of training: arguments."""
from __future__ import annotations

import argparse
import logging
import sys

log = logging.getLogger(__name__)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="refcomp train", description="Train one RefComp stage (DESIGN §6).")
    p.add_argument("--config", required=True, help="training YAML (see training/configs/)")
    p.add_argument("--resume", default=None, help="'latest' or a checkpoint_<k> folder to resume from")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set max_steps=10 --set data.batch_size=2")
    p.add_argument("--precompute-only", action="store_true",
                   help="write the data.cache_dir feature cache and exit")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .config import load_config
    cfg = load_config(args.config, args.set)
    if args.precompute_only:
        import torch

        from .data import read_manifest
        from .precompute import precompute
        if not cfg.data.cache_dir:
            raise ValueError("--precompute-only needs data.cache_dir in the config")
        samples, skipped = read_manifest(cfg.data)
        precompute(cfg, samples, skipped, torch.device("cuda" if torch.cuda.is_available() else "cpu"))
        return 0
    from .loop import run_training
    return run_training(cfg, resume_from=args.resume)


if __name__ == "__main__":
    sys.exit(main())

"""`refcomp demo` and `refcomp toy {demo,reproduce}`.

    refcomp demo                                   # bundled layout + weights -> refcomp_toy_demo.png
    refcomp demo --layout my_layout.json --seed 3 --out demo.png
    refcomp demo --scene-seed 7                    # a fresh layout from the world (split "demo")
    refcomp toy reproduce [--run-dir runs/toy] [--report bench/TOY.md] [--bundle] [--smoke] [--threads 2] [--jobs 2]
    refcomp toy validate --parts RUN/parts --adapter A.safetensors [--adapter B.safetensors] [--count 48]

Exit codes: 0 done, 2 bad input or a step that cannot run (the message says why).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys

log = logging.getLogger("refcomp.toy")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="refcomp toy", description="The RefComp toy world (synthetic scenes).")
    sub = p.add_subparsers(dest="command")
    d = sub.add_parser("demo", help="compose a toy scene with the bundled weights and write a PNG",
                       description="Compose one toy scene from a layout and its references; writes references | "
                                   "layout | result side by side.")
    d.add_argument("--layout", help="toy layout JSON (default: the bundled example)")
    d.add_argument("--scene-seed", type=int, default=None, help="sample layout N of the world's demo split instead")
    d.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    d.add_argument("--weights", help="weights folder (default: the bundled refcomp/toy/weights)")
    d.add_argument("--out", default="refcomp_toy_demo.png", help="output PNG (default refcomp_toy_demo.png)")
    d.add_argument("--steps", type=int, default=20, help="sampling steps (default 20)")
    d.add_argument("--cfg", type=float, default=3.0, help="classifier-free guidance scale (default 3)")
    r = sub.add_parser("reproduce", help="pretrain, train stages 1-3 with `refcomp train`, evaluate, write TOY.md",
                       description="The whole toy pipeline; finished steps are skipped, so rerun to resume.")
    r.add_argument("--run-dir", default="runs/toy", help="working folder (default runs/toy)")
    r.add_argument("--report", default=os.path.join("bench", "TOY.md"), help="report path (default bench/TOY.md)")
    r.add_argument("--bundle", action="store_true", help="copy the fp16 parts and stage-3 adapter into the package's "
                                                          "weights folder afterwards")
    r.add_argument("--smoke", action="store_true", help="CI-sized: a few steps of every stage")
    r.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2, the cores the 90-minute "
                                                          "budget was measured on; use 1 on a busy machine)")
    r.add_argument("--jobs", type=int, default=None, help="stage trainings side by side, one torch thread each "
                                                          "(default 2; 1 trains the variants one after another)")
    v = sub.add_parser("validate", help="score adapters on train-split validation layouts (to choose settings)",
                       description="Never tune on the held-out eval split: compare settings here instead.")
    v.add_argument("--parts", required=True, help="a run's frozen parts folder, e.g. runs/toy/parts")
    v.add_argument("--adapter", action="append", default=[], help="an exported refcomp-stage<k>.safetensors "
                                                                   "(repeat to compare several)")
    v.add_argument("--count", type=int, default=48, help="validation layouts (default 48)")
    v.add_argument("--steps", type=int, default=20, help="sampling steps (default 20)")
    v.add_argument("--alpha", type=float, default=None, help="hold every instance's α at this value "
                                                            "(for adapters trained with α frozen)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        argv = ["demo", *argv]
    args = parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "demo":
            from .demo import run_demo
            if args.layout and args.scene_seed is not None:
                raise ValueError("--layout and --scene-seed choose the layout two ways; give one")
            run_demo(layout=args.layout, scene=args.scene_seed, seed=args.seed, weights=args.weights, out=args.out,
                     steps=args.steps, cfg_scale=args.cfg)
        elif args.command == "validate":
            from .validate import validate
            if args.count < 1 or args.steps < 1:
                raise ValueError("--count and --steps must be >= 1")
            print(validate(args.parts, args.adapter, count=args.count, steps=args.steps, alpha=args.alpha), end="")
        else:
            import torch

            from .reproduce import ReproduceConfig, reproduce
            if args.threads < 1:
                raise ValueError("--threads must be >= 1")
            torch.set_num_threads(args.threads)
            cfg = ReproduceConfig.smoke(args.run_dir, args.report) if args.smoke else \
                ReproduceConfig(run_dir=args.run_dir, report=args.report)
            if args.jobs is not None:
                if args.jobs < 1:
                    raise ValueError("--jobs must be >= 1")
                cfg = dataclasses.replace(cfg, stage_jobs=args.jobs)
            from .demo import BUNDLED_WEIGHTS
            reproduce(cfg, bundle_to=BUNDLED_WEIGHTS if args.bundle else None)
    except (ValueError, FileNotFoundError) as err:
        if os.environ.get("REFCOMP_DEBUG"):
            raise
        log.error("%s", err)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

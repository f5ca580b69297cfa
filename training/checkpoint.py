"""Step 6 of training: checkpoints (resume) and step 7: export.

Training state lives in `OUTPUT/checkpoints/checkpoint_<k>/` (accelerate
`save_state`, automatic naming, rotation by `checkpoints_total_limit`):
- `refcomp.safetensors`: the adapter, written by our save hook as the one RefComp file
  (refcomp_core.checkpoint.save_adapter); accelerate's own model file is suppressed;
- optimizer / RNG files: accelerate's, torch-serialized (our own resume files only;
  never load such files from others);
- `trainer_state.json`: the step, written last; a folder without it is incomplete
  (the run was killed while saving) and is ignored and removed on resume.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
from typing import Any

from refcomp_core import RefCompAdapter
from refcomp_core.atomic import write_text_atomic
from refcomp_core.checkpoint import load_tensors, save_adapter
from refcomp_core.errors import CheckpointError
from refcomp_core.values import one_line, show

log = logging.getLogger(__name__)

ADAPTER_FILE = "refcomp.safetensors"
STATE_FILE = "trainer_state.json"


def _inner(model: Any) -> RefCompAdapter:
    while hasattr(model, "module"):
        model = model.module
    return model.adapter


def _sharded(accelerator: Any) -> bool:
    return "FSDP" in str(accelerator.distributed_type)


def full_adapter(accelerator: Any, model: Any) -> RefCompAdapter | None:
    """The complete trained adapter on the main process (None elsewhere). Under FSDP
    this gathers the shards (a collective: call it on every process)."""
    if not _sharded(accelerator):
        return _inner(model) if accelerator.is_main_process else None
    state = accelerator.get_state_dict(model)
    if not accelerator.is_main_process:
        return None
    adapter = RefCompAdapter(_inner(model).config)
    adapter.load_state_dict({k.split("adapter.", 1)[1]: v for k, v in state.items() if "adapter." in k})
    return adapter


def register_hooks(accelerator: Any, model: Any, *, stage: int, base_model: str, get_step) -> None:
    """Save/load the adapter as the RefComp file instead of accelerate's model file.
    Under FSDP accelerate keeps its own sharded model files for resuming (torch
    distributed checkpoint); the RefComp file is written next to them all the same."""

    def save_hook(models: list, weights: list, output_dir: str) -> None:
        adapter = full_adapter(accelerator, model)
        if adapter is not None:
            save_adapter(os.path.join(output_dir, ADAPTER_FILE), adapter, stage=stage, step=get_step(),
                         base_model=base_model)
        weights.clear()                                   # our file replaces accelerate's model.safetensors

    def load_hook(models: list, input_dir: str) -> None:
        if _sharded(accelerator):
            return                                        # accelerate loads its FSDP model files
        tensors = load_tensors(os.path.join(input_dir, ADAPTER_FILE))     # CheckpointError naming a damaged file
        while models:
            _inner(models.pop()).load_state_dict(tensors)

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def save_checkpoint(accelerator: Any, step: int, skipped: dict[str, int]) -> str | None:
    """save_state, then mark the folder complete with trainer_state.json (main process)."""
    path = accelerator.save_state(safe_serialization=True)
    if accelerator.is_main_process:
        write_text_atomic(os.path.join(path, STATE_FILE), json.dumps({"step": step, "skipped": skipped}))
        log.info("checkpoint at step %d: %s", step, path)
    accelerator.wait_for_everyone()
    return path


def _number(folder: str) -> int:
    match = re.search(r"(\d+)$", folder)
    return int(match.group(1)) if match else -1


def complete_checkpoints(output_dir: str) -> list[str]:
    """Complete checkpoint folders, oldest first."""
    root = os.path.join(output_dir, "checkpoints")
    if not os.path.isdir(root):
        return []
    folders = sorted((os.path.join(root, f) for f in os.listdir(root)), key=_number)
    return [f for f in folders if os.path.isfile(os.path.join(f, STATE_FILE))]


def resume(accelerator: Any, output_dir: str, which: str) -> tuple[int, dict[str, int]]:
    """Load `latest` (or a given folder). Returns (step, skipped counts); (0, {}) when
    `latest` finds nothing. Incomplete folders newer than the one loaded are removed."""
    if which == "latest":
        done = complete_checkpoints(output_dir)
        if not done:
            log.info("--resume latest: no checkpoint in %s, starting fresh", output_dir)
            return 0, {}
        path = done[-1]
    else:
        path = which
        if not os.path.isfile(os.path.join(path, STATE_FILE)):
            raise FileNotFoundError(f"--resume {path!r}: not a complete RefComp training checkpoint "
                                    f"(no {STATE_FILE}); use --resume latest or a checkpoint_<k> folder")
    root = os.path.dirname(path)
    if accelerator.is_main_process:
        for folder in os.listdir(root):
            full = os.path.join(root, folder)
            if _number(full) > _number(path) and not os.path.isfile(os.path.join(full, STATE_FILE)):
                log.warning("removing incomplete checkpoint %s", full)
                shutil.rmtree(full)
    accelerator.wait_for_everyone()
    step, skipped = read_trainer_state(os.path.join(path, STATE_FILE))     # before loading anything heavy
    accelerator.load_state(path)
    accelerator.project_configuration.iteration = _number(path) + 1
    log.info("resumed from %s at step %d", path, step)
    return step, skipped


def read_trainer_state(path: str) -> tuple[int, dict[str, int]]:
    """(step, skipped counts) of a checkpoint's trainer_state.json; CheckpointError naming the file if damaged."""
    try:
        with open(path, "rb") as f:
            state = json.loads(f.read())
    except (OSError, ValueError, RecursionError) as err:
        raise CheckpointError(f"{path}: not readable JSON ({one_line(err)}); the checkpoint is damaged: resume from "
                              "an earlier checkpoint_<k> folder") from None
    step = state.get("step") if isinstance(state, dict) else None
    skipped = state.get("skipped", {}) if isinstance(state, dict) else None
    if isinstance(step, bool) or not isinstance(step, int) or step < 0 or not isinstance(skipped, dict) \
            or not all(isinstance(k, str) and type(v) is int for k, v in skipped.items()):
        raise CheckpointError(f"{path}: expected {{\"step\": <int >= 0>, \"skipped\": {{reason: count}}}}, got "
                              f"{show(state)}; the checkpoint is damaged: resume from an earlier checkpoint_<k> folder")
    return step, dict(skipped)


def check_ranks_agree(accelerator: Any, model: Any) -> str:
    """SHA-1 of this rank's adapter weights, logged per rank; an error is logged when the
    data-parallel ranks disagree (a desynchronised run). Returns the local checksum."""
    import hashlib

    from accelerate.utils import gather_object

    digest = hashlib.sha1()
    for key, value in sorted(_inner(model).state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().float().cpu().numpy().tobytes())
    local = digest.hexdigest()
    log.info("adapter weights checksum (rank %d of %d): %s", accelerator.process_index, accelerator.num_processes,
             local)
    sharded = _sharded(accelerator)                              # shards differ by design
    every = gather_object([local]) if accelerator.num_processes > 1 else [local]
    if len(set(every)) > 1 and not sharded:
        log.error("data-parallel ranks ended with different adapter weights: %s", every)
    return local


def export(accelerator: Any, model: Any, path: str, *, stage: int, step: int, base_model: str) -> None:
    """Write the one RefComp file (DESIGN §5) from the trained model (FSDP-safe)."""
    adapter = full_adapter(accelerator, model)
    if adapter is None:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_adapter(path, adapter, stage=stage, step=step, base_model=base_model)
    log.info("exported %s (stage %d, step %d)", path, stage, step)

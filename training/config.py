"""Step 1 of training: arguments and config.

A run is described by one YAML file that maps onto `TrainConfig` (nested
dataclasses). Every section checks its own invariants in `__post_init__` and
names the field and the fix; unknown keys are an error, never silently ignored.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Literal

from refcomp_core import STAGE_MODULES

# Subfolders of a diffusers FLUX.1 repository (black-forest-labs/FLUX.1-dev layout).
FLUX_SUBFOLDERS = {"transformer": "transformer", "vae": "vae", "text_encoder": "text_encoder",
                   "tokenizer": "tokenizer", "text_encoder_2": "text_encoder_2", "tokenizer_2": "tokenizer_2"}


PROVIDERS = ("diffusers", "toy")


@dataclass
class ModelPaths:
    """Local folders of the frozen parts (loaded with from_pretrained, never downloaded).

    `flux_root` is a diffusers FLUX.1 folder; any component given explicitly wins over
    its subfolder. `clip_vision` is CLIP-L/14 with projection, `dino` is DINOv2-L/14.
    `provider: toy` loads the toy world's frozen parts from `toy_weights` instead
    (refcomp/toy/parts.py; 8 px per token).
    """

    provider: str = "diffusers"
    toy_weights: str | None = None

    flux_root: str | None = None
    transformer: str | None = None
    vae: str | None = None
    text_encoder: str | None = None      # CLIP-L text: pooled vector -> FLUX `vec`, instance captions
    tokenizer: str | None = None
    text_encoder_2: str | None = None    # T5: the token sequence
    tokenizer_2: str | None = None
    clip_vision: str | None = None
    dino: str | None = None
    base_model: str = "FLUX.1-dev"

    def __post_init__(self) -> None:
        if self.provider not in PROVIDERS:
            raise ValueError(f"models.provider: {self.provider!r} is not one of {list(PROVIDERS)}")
        if self.provider == "toy" and not self.toy_weights:
            raise ValueError("models.toy_weights: provider 'toy' needs the folder of the toy parts "
                             "(backbone/text/clip/dino .safetensors)")

    def resolve(self, name: str) -> str:
        """The folder of one component; raises ValueError naming the YAML field."""
        path = getattr(self, name)
        if path is None and name in FLUX_SUBFOLDERS and self.flux_root:
            path = os.path.join(self.flux_root, FLUX_SUBFOLDERS[name])
        if path is None:
            raise ValueError(f"models.{name}: no path given; set models.{name} (or models.flux_root for the FLUX "
                             "components) to a local folder")
        if not os.path.isdir(path):
            raise FileNotFoundError(f"models.{name}: folder {path!r} does not exist; download the model and "
                                    "point the config at its local folder")
        return path


@dataclass
class DataConfig:
    """The JSONL manifest (DESIGN §6) and how it is batched.

    buckets: [width, height] in px, multiples of 16; each image goes to the bucket
    closest in aspect ratio and is resized to it (no crop, so boxes stay valid).
    """

    manifest: str = ""
    cache_dir: str | None = None
    buckets: list[list[int]] = field(default_factory=lambda: [[1024, 1024], [1152, 896], [896, 1152],
                                                              [1216, 832], [832, 1216]])
    batch_size: int = 1
    max_text_len: int = 512
    ref_background: float = 1.0

    def __post_init__(self) -> None:
        if not self.manifest:
            raise ValueError("data.manifest: required; the path of the JSONL manifest (see docs/training.md)")
        for b in self.buckets:
            if len(b) != 2 or any(int(v) <= 0 or int(v) % 16 for v in b):
                raise ValueError(f"data.buckets: {b} must be [width, height] in px, positive multiples of 16")
        if self.batch_size < 1 or self.max_text_len < 1:
            raise ValueError("data.batch_size and data.max_text_len must be >= 1")


@dataclass
class LossConfig:
    """Loss weights and schedules (DESIGN §6). Weights of 0 switch a term off."""

    logit_mean: float = 0.0          # FLUX timestep sampling: sigma = shift(sigmoid(N(mean, std)))
    logit_std: float = 1.0
    shift: bool = True               # resolution-dependent shift (mu from base_shift to max_shift)
    base_shift: float = 0.5
    max_shift: float = 1.15
    base_seq_len: int = 256
    max_seq_len: int = 4096
    identity_weight: float = 0.0     # DINO identity loss, x alpha (detached)
    box_weight: float = 1.0          # differentiable box alignment, x (1 - alpha) (detached)
    box_temperature: float = 0.1
    rpl_weight: float = 0.01         # region preservation (XVerse used 10; the plan 0.01)
    route_weight: float = 0.0        # α routing prior toward the depth label; 0 = the plan (bench/TOY.md)
    route_fg_target: float = 1.0     # the prior's α target for fg-labelled instances (mg/bg: 0), in (0.5, 1]
    rpl_drop_prob: float = 0.5
    aux_every: int = 1               # run identity/box losses every N steps ...
    aux_max_sigma: float = 1.0       # ... and only on rows with sigma <= this (small t)

    def __post_init__(self) -> None:
        for name in ("identity_weight", "box_weight", "rpl_weight", "route_weight", "logit_std", "box_temperature"):
            if getattr(self, name) < 0:
                raise ValueError(f"loss.{name} must be >= 0, got {getattr(self, name)}")
        if not 0.5 < self.route_fg_target <= 1.0:
            raise ValueError(f"loss.route_fg_target must be in (0.5, 1] (fg instances stay routed FG), "
                             f"got {self.route_fg_target}")
        if not 0.0 <= self.rpl_drop_prob <= 1.0 or not 0.0 < self.aux_max_sigma <= 1.0 or self.aux_every < 1:
            raise ValueError("loss.rpl_drop_prob must be in [0, 1], loss.aux_max_sigma in (0, 1], "
                             "loss.aux_every >= 1")


@dataclass
class TrainConfig:
    """One training stage. `adapter` holds RefCompConfig overrides (ranks, K, F, layout
    blocks); its model dimensions are always read from the loaded FLUX and encoders."""

    stage: int
    output_dir: str
    models: ModelPaths
    data: DataConfig
    loss: LossConfig = field(default_factory=LossConfig)
    init_from: str | None = None
    alpha_from_stage: int = 1            # from 2, α collapsed below 0.5 in the toy; images tied (bench/TOY.md)
    adapter: dict[str, Any] = field(default_factory=dict)
    learning_rate: float = 1e-4
    warmup_steps: int = 0
    max_steps: int = 1000
    adam_betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    gradient_checkpointing: bool = False
    cudnn_attention: Literal["auto", "probe", "on", "off"] = "auto"   # CUDA: training/attention.py (issue 13)
    checkpoint_every: int = 1000
    checkpoints_total_limit: int = 3
    log_every: int = 10
    validate_every: int = 0
    validation_steps: int = 20
    guidance: float = 3.5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.stage not in STAGE_MODULES:
            raise ValueError(f"stage: must be one of {sorted(STAGE_MODULES)}, got {self.stage!r}")
        if self.alpha_from_stage not in (1, 2):
            raise ValueError(f"alpha_from_stage: must be 1 or 2 (DESIGN §6), got {self.alpha_from_stage!r}")
        if self.stage > 1 and not self.init_from:
            raise ValueError(f"init_from: stage {self.stage} starts from the previous stage's exported RefComp "
                             "file; set init_from to that .safetensors path")
        if isinstance(self.cudnn_attention, bool):          # YAML reads a bare on / off as a bool
            self.cudnn_attention = "on" if self.cudnn_attention else "off"
        if self.cudnn_attention not in ("auto", "probe", "on", "off"):
            raise ValueError(f"cudnn_attention: 'auto', 'probe', 'on' or 'off', got {self.cudnn_attention!r}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"mixed_precision: 'no', 'fp16' or 'bf16', got {self.mixed_precision!r}")
        if self.learning_rate <= 0 or self.max_steps < 1 or self.checkpoint_every < 1 or self.log_every < 1:
            raise ValueError("learning_rate must be > 0; max_steps, checkpoint_every, log_every must be >= 1")
        if self.checkpoints_total_limit < 1 or self.warmup_steps < 0 or self.grad_clip < 0:
            raise ValueError("checkpoints_total_limit must be >= 1, warmup_steps and grad_clip >= 0")
        self.adam_betas = tuple(self.adam_betas)

    @property
    def trainable(self) -> tuple[str, ...]:
        """Adapter namespaces trained in this stage (α waits for `alpha_from_stage`)."""
        names = STAGE_MODULES[self.stage]
        return tuple(n for n in names if n != "alpha" or self.stage >= self.alpha_from_stage)

    @property
    def modulation_enabled(self) -> bool:
        """Stage 1 trains the layout pathway only: FG instances get no modulation."""
        return self.stage >= 2


SECTIONS = {"models": ModelPaths, "data": DataConfig, "loss": LossConfig}


def config_from_dict(raw: dict[str, Any]) -> TrainConfig:
    """Build a TrainConfig from parsed YAML; unknown keys raise ValueError naming them."""
    _check_keys(TrainConfig, raw, "")
    kwargs = dict(raw)
    for name, cls in SECTIONS.items():
        section = kwargs.get(name) or {}
        if not isinstance(section, dict):
            raise ValueError(f"{name}: expected a mapping, got {type(section).__name__}")
        _check_keys(cls, section, f"{name}.")
        kwargs[name] = cls(**section)
    for required in ("stage", "output_dir"):
        if required not in kwargs:
            raise ValueError(f"{required}: required field missing from the training config")
    return TrainConfig(**kwargs)


def _check_keys(cls: type, raw: dict[str, Any], prefix: str) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"unknown config keys {[prefix + k for k in unknown]}; known: {sorted(known)}")


def load_config(path: str, overrides: list[str] | None = None) -> TrainConfig:
    """Read YAML, apply `key.sub=value` overrides (values parsed as YAML), validate.

    Relative paths in the file are resolved against the file's folder.
    """
    import yaml

    if not os.path.isfile(path):
        raise FileNotFoundError(f"--config: training config {path!r} not found")
    with open(path, encoding="utf-8") as f:
        raw = yaml.safe_load(f) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a training config is a YAML mapping")
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r}: expected key=value, e.g. --set max_steps=10")
        node = raw
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(value)
    _resolve_paths(raw, os.path.dirname(os.path.abspath(path)))
    return config_from_dict(raw)


PATH_KEYS = {"output_dir", "init_from", "data.manifest", "data.cache_dir"} | \
    {f"models.{f.name}" for f in dataclasses.fields(ModelPaths)
                                     if f.name not in ("base_model", "provider")}


def _resolve_paths(raw: dict[str, Any], base: str) -> None:
    for dotted in PATH_KEYS:
        *parents, leaf = dotted.split(".")
        node = raw
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if isinstance(node, dict) and isinstance(node.get(leaf), str):
            node[leaf] = os.path.normpath(os.path.join(base, os.path.expanduser(node[leaf])))

"""`RefCompConfig`: every dimension of a RefComp adapter, saved with its weights.

The architecture is never inferred from tensor names: a checkpoint carries this
config as JSON in its safetensors metadata and is rebuilt from it.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import CheckpointError
from .limits import MAX_FILE_BLOCKS, MAX_FILE_DIM, MAX_FILE_FREQS, MAX_FILE_POINTS
from .values import finite_float, show

FORMAT_VERSION = 1

LAYOUT_PATHWAYS: tuple[str, ...] = ("assemble", "instanceassemble")

# InstanceAssemble's LoRA sites (WEIGHTS_COMPAT §1.3): the only modules its branch switches on.
# Double layout block: the two AdaLN linears, q/k/v and out of both streams, the second FFN linear of
# both streams. Single layout block: the AdaLN linear, q/k/v, the MLP input and the output linear.
IA_DOUBLE_SITES: tuple[str, ...] = ("img_mod", "txt_mod", "img_q", "img_k", "img_v", "txt_q", "txt_k", "txt_v",
                                    "img_out", "txt_out", "img_mlp_out", "txt_mlp_out")
IA_SINGLE_SITES: tuple[str, ...] = ("mod", "q", "k", "v", "mlp_in", "out")

# Projections of a layout block that carry an Assemble-Attn LoRA.
# The context stream's query and out-projection are deliberately absent: the branch
# keeps only the image tokens' outputs, which depend on the instance token's key and
# value but not on its query or its own output, so LoRAs there would never receive
# gradient (and would break DDP's every-parameter-used check).
LORA_TARGETS: tuple[str, ...] = ("img_q", "img_k", "img_v", "img_out", "txt_k", "txt_v")


@dataclass(frozen=True)
class IAConfig:
    """The InstanceAssemble layout pathway (WEIGHTS_COMPAT §1): its blocks, encoder sizes and LoRA.

    `lora` maps a site key to (rank, multiplier): "<b>.<site>" for double block b (sites in
    IA_DOUBLE_SITES) and "s<s>.<site>" for single block s (IA_SINGLE_SITES). A site that is not
    listed has no LoRA. The multiplier is alpha / rank as InstanceAssemble's diffusers 0.33.1 applies it.
    `coord_dtype` is the dtype of the box coordinates and Fourier features (bf16 upstream).
    """

    double_blocks: tuple[int, ...]
    single_blocks: tuple[int, ...]
    mlp_hidden: int
    lora: dict[str, tuple[int, float]] = field(default_factory=dict)
    text_dim: int = 768
    dense_k: int = 6
    fourier_freqs: int = 8
    fourier_temperature: float = 100.0
    coord_dtype: Literal["bfloat16", "float32"] = "bfloat16"

    def __post_init__(self) -> None:
        for name in ("mlp_hidden", "text_dim", "dense_k", "fourier_freqs"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"IAConfig.{name} must be a positive int, got {value!r}")
        if self.dense_k < 2:
            raise ValueError(f"IAConfig.dense_k must be >= 2 (points include both box corners), got {self.dense_k}")
        if self.coord_dtype not in ("bfloat16", "float32"):
            raise ValueError(f"IAConfig.coord_dtype must be 'bfloat16' or 'float32', got {self.coord_dtype!r}")
        object.__setattr__(self, "double_blocks", tuple(int(b) for b in self.double_blocks))
        object.__setattr__(self, "single_blocks", tuple(int(b) for b in self.single_blocks))
        lora = {}
        for key, value in dict(self.lora).items():
            block, _, site = str(key).partition(".")
            single = block.startswith("s")
            number = block[1:] if single else block
            known = IA_SINGLE_SITES if single else IA_DOUBLE_SITES
            if not number.isdigit() or site not in known:
                raise ValueError(f"IAConfig.lora: unknown site {key!r}; use '<double block>.<site>' with a site in "
                                 f"{list(IA_DOUBLE_SITES)} or 's<single block>.<site>' with one in "
                                 f"{list(IA_SINGLE_SITES)}")
            blocks = self.single_blocks if single else self.double_blocks
            if int(number) not in blocks:
                raise ValueError(f"IAConfig.lora: site {key!r} is on block {number}, which is not a layout block "
                                 f"({list(blocks)})")
            rank, mult = value
            if not isinstance(rank, int) or isinstance(rank, bool) or rank <= 0:
                raise ValueError(f"IAConfig.lora[{key!r}]: rank must be a positive int, got {rank!r}")
            lora[str(key)] = (int(rank), float(mult))
        object.__setattr__(self, "lora", lora)

    @property
    def position_dim(self) -> int:
        """K^2 points x 2 coordinates x F frequencies x (sin, cos): 1152 for InstanceAssemble."""
        return self.dense_k ** 2 * 2 * 2 * self.fourier_freqs

    def sites(self, key: str) -> dict[str, tuple[int, float]]:
        """LoRA sites of one layout block ('3' or 's0') -> {site: (rank, multiplier)}."""
        prefix = f"{key}."
        return {k[len(prefix):]: v for k, v in self.lora.items() if k.startswith(prefix)}

    @classmethod
    def default_blocks(cls, num_double_blocks: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """InstanceAssemble's layout blocks: every third double block from 0, and single block 0."""
        return tuple(range(0, num_double_blocks, 3)), (0,)


@dataclass(frozen=True)
class RefCompConfig:
    """Dimensions and switches of one adapter.

    `hidden_size`, `num_double_blocks`, `num_single_blocks` and `num_heads` must
    come from the loaded FLUX model (`RefCompConfig.for_model(...)`), never be
    hard-coded: FLUX.1 has 3072 / 19 / 38 / 24, tests use tiny models.
    """

    hidden_size: int
    num_double_blocks: int
    num_single_blocks: int
    num_heads: int
    clip_dim: int = 768
    dino_dim: int = 1024
    text_dim: int = 768
    visual_dim: int = 1024
    alpha_hidden: int = 256
    dense_k: int = 4
    fourier_freqs: int = 16
    fourier_temperature: float = 100.0
    modulation_rank: int | Literal["full"] = 64
    bridge_rank: int = 16
    lora_rank: int = 128
    lora_scale: float = 1.0
    lora_targets: tuple[str, ...] = LORA_TARGETS
    layout_blocks: tuple[int, ...] | None = None
    assemble_output: Literal["gate", "linear"] = "gate"
    max_instances: int = 50
    layout_pathway: Literal["assemble", "instanceassemble"] = "assemble"
    identity: bool = True
    instanceassemble: IAConfig | None = None
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        positive = ("hidden_size", "num_double_blocks", "num_heads", "clip_dim", "dino_dim", "text_dim",
                    "visual_dim", "alpha_hidden", "dense_k", "fourier_freqs", "bridge_rank", "lora_rank",
                    "max_instances")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"RefCompConfig.{name} must be a positive int, got {value!r}")
        if self.num_single_blocks < 0:
            raise ValueError(f"RefCompConfig.num_single_blocks must be >= 0, got {self.num_single_blocks}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"RefCompConfig.hidden_size ({self.hidden_size}) must be divisible by "
                             f"num_heads ({self.num_heads})")
        if (self.hidden_size // self.num_heads) % 2:
            raise ValueError(f"RefCompConfig: head dim hidden_size / num_heads = {self.head_dim} must be even for RoPE")
        if self.modulation_rank != "full" and (not isinstance(self.modulation_rank, int) or self.modulation_rank <= 0):
            raise ValueError(f"RefCompConfig.modulation_rank must be a positive int or 'full', "
                             f"got {self.modulation_rank!r}")
        if self.assemble_output not in ("gate", "linear"):
            raise ValueError(f"RefCompConfig.assemble_output must be 'gate' or 'linear', "
                             f"got {self.assemble_output!r}")
        unknown = set(self.lora_targets) - set(LORA_TARGETS)
        if unknown:
            raise ValueError(f"RefCompConfig.lora_targets has unknown entries {sorted(unknown)}; "
                             f"allowed: {list(LORA_TARGETS)}")
        if self.layout_blocks is not None:
            object.__setattr__(self, "layout_blocks", tuple(int(b) for b in self.layout_blocks))
            bad = [b for b in self.layout_blocks if not 0 <= b < self.num_double_blocks]
            if bad or len(set(self.layout_blocks)) != len(self.layout_blocks):
                raise ValueError(f"RefCompConfig.layout_blocks {list(self.layout_blocks)} must be distinct "
                                 f"double-block indices in [0, num_double_blocks={self.num_double_blocks})")
        object.__setattr__(self, "lora_targets", tuple(self.lora_targets))
        if self.layout_pathway not in LAYOUT_PATHWAYS:
            raise ValueError(f"RefCompConfig.layout_pathway must be one of {list(LAYOUT_PATHWAYS)}, "
                             f"got {self.layout_pathway!r}")
        if not isinstance(self.identity, bool):
            raise ValueError(f"RefCompConfig.identity must be true or false, got {self.identity!r}")
        ia = self.instanceassemble
        if isinstance(ia, dict):
            ia = IAConfig(**ia)
            object.__setattr__(self, "instanceassemble", ia)
        if (self.layout_pathway == "instanceassemble") != (ia is not None):
            raise ValueError("RefCompConfig.instanceassemble must be set exactly when layout_pathway is "
                             "'instanceassemble'")
        if ia is not None:
            bad = [b for b in ia.double_blocks if not 0 <= b < self.num_double_blocks] + \
                  [f"s{b}" for b in ia.single_blocks if not 0 <= b < self.num_single_blocks]
            if bad:
                raise ValueError(f"RefCompConfig.instanceassemble: layout blocks {bad} do not exist in a model with "
                                 f"{self.num_double_blocks} double and {self.num_single_blocks} single blocks")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def spatial_dim(self) -> int:
        """K^2 points times 4F Fourier features (sin/cos of x and y)."""
        return self.dense_k ** 2 * 4 * self.fourier_freqs

    @property
    def layout_block_ids(self) -> tuple[int, ...]:
        """Double blocks that run the layout pathway (Assemble-Attn default: all of them;
        InstanceAssemble: its own list)."""
        if self.instanceassemble is not None:
            return self.instanceassemble.double_blocks
        if self.layout_blocks is None:
            return tuple(range(self.num_double_blocks))
        return tuple(sorted(self.layout_blocks))

    @classmethod
    def for_model(cls, *, hidden_size: int, num_double_blocks: int, num_single_blocks: int, num_heads: int,
                  **overrides: Any) -> "RefCompConfig":
        """Config for a model whose dimensions were read from the loaded weights."""
        return cls(hidden_size=hidden_size, num_double_blocks=num_double_blocks,
                   num_single_blocks=num_single_blocks, num_heads=num_heads, **overrides)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, *, source: str = "refcomp_config") -> "RefCompConfig":
        """The config saved in a checkpoint's metadata. Anything but a sound config raises
        `CheckpointError` starting with `source` (e.g. "FILE: refcomp_config") and naming the field."""
        kwargs = config_kwargs(text, source)
        try:
            return cls(**kwargs)
        except ValueError as err:           # the class's own invariants, e.g. heads dividing the width
            raise CheckpointError(f"{source}: {err}; the file is damaged or was not written by RefComp") from None

    def check_model(self, *, hidden_size: int, num_double_blocks: int, num_single_blocks: int) -> None:
        """Raise `CheckpointError` naming both numbers when the model does not fit this adapter."""
        pairs = (("hidden size", self.hidden_size, hidden_size),
                 ("double-block count", self.num_double_blocks, num_double_blocks),
                 ("single-block count", self.num_single_blocks, num_single_blocks))
        for what, ours, theirs in pairs:
            if ours != theirs:
                raise CheckpointError(
                    f"this RefComp checkpoint was trained for a FLUX model with {what} {ours}, but the model "
                    f"given has {what} {theirs}; load a checkpoint trained for this model")


def _int_bounds() -> dict[str, tuple[int, int]]:
    """Bounds of the integer fields of a config read from a file (refcomp_core.limits)."""
    dims = ("hidden_size", "num_heads", "clip_dim", "dino_dim", "text_dim", "visual_dim", "alpha_hidden",
            "bridge_rank", "lora_rank")
    return {**{name: (1, MAX_FILE_DIM) for name in dims}, "num_double_blocks": (1, MAX_FILE_BLOCKS),
            "num_single_blocks": (0, MAX_FILE_BLOCKS), "dense_k": (1, MAX_FILE_POINTS),
            "fourier_freqs": (1, MAX_FILE_FREQS), "max_instances": (1, 1 << 20), "format_version": (0, 1 << 20)}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _field_problem(name: str, value: Any) -> str | None:
    """Why `value` cannot be the field `name` of a config read from a file (None when it can)."""
    bounds = _int_bounds()
    if name in bounds:
        low, high = bounds[name]
        return None if _is_int(value) and low <= value <= high else f"an integer in [{low}, {high}]"
    if name in ("fourier_temperature", "lora_scale"):
        number = finite_float(value)
        if name == "fourier_temperature":
            return None if number is not None and number > 0 else "a finite number > 0"
        return None if number is not None else "a finite number"
    if name == "modulation_rank":
        return None if value == "full" or (_is_int(value) and 1 <= value <= MAX_FILE_DIM) else \
            f"an integer in [1, {MAX_FILE_DIM}] or \"full\""
    if name == "lora_targets":
        return None if isinstance(value, list) and all(isinstance(v, str) for v in value) else "a list of names"
    if name == "layout_blocks":
        ok = value is None or (isinstance(value, list) and len(value) <= MAX_FILE_BLOCKS
                               and all(_is_int(v) for v in value))
        return None if ok else "null or a list of double-block indices"
    if name == "assemble_output":
        return None if isinstance(value, str) else "\"gate\" or \"linear\""
    if name == "extra":
        return None if isinstance(value, dict) else "an object"
    if name == "layout_pathway":
        return None if value in LAYOUT_PATHWAYS else f"one of {list(LAYOUT_PATHWAYS)}"
    if name == "identity":
        return None if isinstance(value, bool) else "true or false"
    if name == "instanceassemble":
        return None if value is None or isinstance(value, dict) else "null or an object"
    return None


def _ia_config(value: dict[str, Any], source: str) -> IAConfig:
    """The InstanceAssemble section of a file's config, checked (CheckpointError naming the field)."""
    def bad(field: str, problem: str) -> CheckpointError:
        return CheckpointError(f"{source}: field instanceassemble.{field} {problem}; the file is damaged or was "
                               "not written by RefComp")
    ia = dict(value)
    for key in ("double_blocks", "single_blocks"):
        blocks = ia.get(key)
        if not isinstance(blocks, list) or len(blocks) > MAX_FILE_BLOCKS or not all(_is_int(b) for b in blocks):
            raise bad(key, f"must be a list of at most {MAX_FILE_BLOCKS} block indices, got {show(blocks)}")
    lora = ia.get("lora", {})
    if not isinstance(lora, dict) or len(lora) > 64 * MAX_FILE_BLOCKS:
        raise bad("lora", f"must be an object of LoRA sites, got {show(lora)}")
    for site, entry in lora.items():
        if not (isinstance(entry, list) and len(entry) == 2 and _is_int(entry[0]) and 1 <= entry[0] <= MAX_FILE_DIM
                and finite_float(entry[1]) is not None):
            raise bad(f"lora[{show(site)}]", f"must be [rank in [1, {MAX_FILE_DIM}], a finite multiplier], "
                                             f"got {show(entry)}")
    for key in ("mlp_hidden", "text_dim", "dense_k", "fourier_freqs"):
        if key in ia and not (_is_int(ia[key]) and 1 <= ia[key] <= MAX_FILE_DIM):
            raise bad(key, f"must be an integer in [1, {MAX_FILE_DIM}], got {show(ia[key])}")
    ia["lora"] = {k: tuple(v) for k, v in lora.items()}
    try:
        return IAConfig(**ia)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{source}: instanceassemble: {err}; the file is damaged or was not written by "
                              "RefComp") from None


def config_kwargs(text: Any, source: str) -> dict[str, Any]:
    """Keyword arguments of RefCompConfig from its JSON text, every field type- and
    bound-checked; `CheckpointError` starting with `source` and naming the field otherwise.
    Unknown keys go to `extra`."""
    if not isinstance(text, str):
        raise CheckpointError(f"{source}: expected JSON text, got {type(text).__name__}; the file is damaged")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as err:
        raise CheckpointError(f"{source}: not valid JSON ({type(err).__name__}); the file is damaged or was not "
                              "written by RefComp") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{source}: expected a JSON object, got {type(data).__name__}; the file is damaged")
    version = data.get("format_version", FORMAT_VERSION)
    if _is_int(version) and version > FORMAT_VERSION:
        raise CheckpointError(f"{source}: format_version {version} is newer than this RefComp "
                              f"understands ({FORMAT_VERSION}); upgrade RefComp")
    fields = {f.name: f for f in dataclasses.fields(RefCompConfig)}
    for name in fields:
        if name in data:
            problem = _field_problem(name, data[name])
            if problem:
                raise CheckpointError(f"{source}: field {name} must be {problem}, got {show(data[name])}; the file "
                                      "is damaged or was not written by RefComp")
        elif fields[name].default is dataclasses.MISSING and fields[name].default_factory is dataclasses.MISSING:
            raise CheckpointError(f"{source}: field {name} is missing; the file is damaged or was not written by "
                                  "RefComp")
    kwargs = {k: v for k, v in data.items() if k in fields}
    for key in ("lora_targets", "layout_blocks"):
        if kwargs.get(key) is not None:
            kwargs[key] = tuple(kwargs[key])
    if isinstance(kwargs.get("instanceassemble"), dict):
        kwargs["instanceassemble"] = _ia_config(kwargs["instanceassemble"], source)
    kwargs["extra"] = {**kwargs.get("extra", {}), **{k: v for k, v in data.items() if k not in fields}}
    return kwargs

"""`XVerseConfig`: the sizes of XVerse's released T-Mod adapter and LoRA (WEIGHTS_COMPAT §2.2).

The nine adapter fields are exactly the keys of the released `modulation_adapter/config.json`
(the `CLIPModAdapter` constructor arguments). The transformer fields say which FLUX.1 the files
belong to (hidden size = `out_dim`, 19 double and 38 single blocks, 64 packed input channels for
FLUX.1). The LoRA table lists every site the converted file carries. Every shape of the adapter
and of the LoRA is computed here, from these numbers, never from constants elsewhere.

LoRA sites are diffusers module paths of `FluxTransformer2DModel` (`x_embedder`,
`transformer_blocks.3.attn.to_q`, `single_transformer_blocks.0.proj_out`, ...), mapped to
(rank, alpha / rank). alpha / rank is the file's own scale. XVerse multiplies it by the global
scale g of an entry point (1.0 or 0.85), except for the single-block overrides: those replace the
whole scaling with an absolute weight, 0.85 for text and latents and 1.3 for reference tokens
(WEIGHTS_COMPAT §2.6; see `presets.py`).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from ..errors import CheckpointError
from ..limits import MAX_FILE_BLOCKS, MAX_FILE_DIM
from ..values import finite_float, show

# The constructor arguments of the released adapter = the keys of its config.json.
RELEASED_KEYS: tuple[str, ...] = ("out_dim", "width", "pblock_width", "layers", "pblock_layers", "heads",
                                  "input_text_dim", "input_image_dim", "pblock_single_blocks")

# LoRA target modules of the release (WEIGHTS_COMPAT §2.2b), by the diffusers module path inside a block.
DOUBLE_LORA: tuple[str, ...] = ("norm1.linear", "norm1_context.linear", "attn.to_q", "attn.to_k", "attn.to_v",
                                "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_out.0",
                                "attn.to_add_out", "ff.net.2", "ff_context.net.2")
SINGLE_LORA: tuple[str, ...] = ("attn.to_q", "attn.to_k", "attn.to_v", "proj_out")
# In the file, but their multiplier is 0 for every stream at every step (`train_partial_lora_layers:
# "qkv_projout"`, §2.6): the converter drops them, so the converted file never carries them.
SINGLE_LORA_OFF: tuple[str, ...] = ("norm.linear", "proj_mlp")
TOP_LORA: tuple[str, ...] = ("x_embedder",)

@dataclass(frozen=True)
class XVerseConfig:
    """XVerse's adapter sizes (config.json), the FLUX.1 it belongs to, and its LoRA sites.

    net:  TextImageResampler(width, layers, heads) -> (B, L, out_dim)                    shared offsets
    net2: TextImageResampler(pblock_width, pblock_layers, heads) -> (B, L, offset_blocks * out_dim)
    with offset_blocks = num_double_blocks + pblock_single_blocks (19 + 0 = 19 released).
    """

    out_dim: int
    width: int
    pblock_width: int
    layers: int
    pblock_layers: int
    heads: int
    input_text_dim: int
    input_image_dim: int
    pblock_single_blocks: int = 0
    num_double_blocks: int = 19
    num_single_blocks: int = 38
    in_channels: int = 64
    mlp_hidden: int | None = None          # FLUX feed-forward width; None = 4 * out_dim
    time_embedding_dim: int = 64           # hard-coded upstream (the adapter's zero timestep embedding)
    lora: dict[str, tuple[int, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("out_dim", "width", "pblock_width", "heads", "input_text_dim", "input_image_dim", "in_channels",
                     "time_embedding_dim"):
            _positive(name, getattr(self, name), MAX_FILE_DIM)
        for name in ("layers", "pblock_layers", "num_double_blocks", "num_single_blocks"):
            _positive(name, getattr(self, name), MAX_FILE_BLOCKS)
        if not _is_int(self.pblock_single_blocks) or not 0 <= self.pblock_single_blocks <= MAX_FILE_BLOCKS:
            raise ValueError(f"XVerseConfig.pblock_single_blocks must be an int in [0, {MAX_FILE_BLOCKS}], got "
                             f"{show(self.pblock_single_blocks)}")
        if self.mlp_hidden is None:
            object.__setattr__(self, "mlp_hidden", 4 * self.out_dim)
        _positive("mlp_hidden", self.mlp_hidden, 4 * MAX_FILE_DIM)
        for name in ("width", "pblock_width"):
            if getattr(self, name) % self.heads:
                raise ValueError(f"XVerseConfig.{name} ({getattr(self, name)}) must be divisible by heads "
                                 f"({self.heads}): the resampler attention splits it into heads")
        if self.pblock_single_blocks > self.num_single_blocks:
            raise ValueError(f"XVerseConfig.pblock_single_blocks ({self.pblock_single_blocks}) exceeds the "
                             f"{self.num_single_blocks} single blocks")
        allowed = set(self.lora_sites())
        lora = {}
        for site, value in dict(self.lora).items():
            if site not in allowed:
                raise ValueError(f"XVerseConfig.lora: {show(site)} is not a site of XVerse's LoRA on a FLUX model with "
                                 f"{self.num_double_blocks} double and {self.num_single_blocks} single blocks; sites "
                                 f"are diffusers module paths such as 'transformer_blocks.0.attn.to_q'")
            try:
                rank, scale = value
            except (TypeError, ValueError):
                raise ValueError(f"XVerseConfig.lora[{show(site)}] must be (rank, alpha / rank), got {show(value)}") \
                    from None
            if not _is_int(rank) or not 0 < rank <= MAX_FILE_DIM:
                raise ValueError(f"XVerseConfig.lora[{show(site)}]: rank must be an int in [1, {MAX_FILE_DIM}], got "
                                 f"{show(rank)}")
            if finite_float(scale) is None:
                raise ValueError(f"XVerseConfig.lora[{show(site)}]: alpha / rank must be a finite number, got "
                                 f"{show(scale)}")
            lora[str(site)] = (int(rank), float(scale))
        object.__setattr__(self, "lora", lora)

    @property
    def offset_blocks(self) -> int:
        """Blocks with a per-block offset: `net2` outputs this many out_dim vectors per text token."""
        return self.num_double_blocks + self.pblock_single_blocks

    def lora_sites(self) -> dict[str, tuple[int, int]]:
        """Every site a converted file may carry -> (in_features, out_features)."""
        return {m: d for m, d in self.released_lora_modules().items() if not _is_off(m)}

    def released_lora_modules(self) -> dict[str, tuple[int, int]]:
        """Every module of the released LoRA file (§2.2b, including the never-active ones) -> (in, out)."""
        d, m = self.out_dim, self.mlp_hidden
        double = {"norm1.linear": (d, 6 * d), "norm1_context.linear": (d, 6 * d), "ff.net.2": (m, d),
                  "ff_context.net.2": (m, d)}
        single = {"norm.linear": (d, 3 * d), "proj_mlp": (d, m), "proj_out": (d + m, d)}
        out = {"x_embedder": (self.in_channels, d)}
        for b in range(self.num_double_blocks):
            out.update({f"transformer_blocks.{b}.{name}": double.get(name, (d, d)) for name in DOUBLE_LORA})
        for s in range(self.num_single_blocks):
            out.update({f"single_transformer_blocks.{s}.{name}": single.get(name, (d, d))
                        for name in SINGLE_LORA_OFF + SINGLE_LORA})
        return out

    def released_config(self) -> dict[str, int]:
        """The nine config.json values."""
        return {k: getattr(self, k) for k in RELEASED_KEYS}

    @classmethod
    def from_released(cls, config: dict[str, Any], *, source: str = "config.json",
                      **transformer: Any) -> "XVerseConfig":
        """From the released config.json (a dict). `transformer` sets num_double_blocks, num_single_blocks,
        in_channels, mlp_hidden and lora. Raises CheckpointError naming any missing, unknown or bad key."""
        if not isinstance(config, dict):
            raise CheckpointError(f"{source}: expected a JSON object with the keys {list(RELEASED_KEYS)}, found "
                                  f"{type(config).__name__}")
        name = config.get("_class_name", "CLIPModAdapter")
        if name != "CLIPModAdapter":
            raise CheckpointError(f"{source}: _class_name is {show(name)}; XVerse's modulation adapter is a "
                                  "'CLIPModAdapter'. Give the modulation_adapter/ folder of XVerse's release")
        missing = [k for k in RELEASED_KEYS if k not in config]
        unknown = sorted(k for k in config if k not in RELEASED_KEYS and not k.startswith("_"))
        if missing or unknown:
            parts = ([f"missing keys {missing}"] if missing else []) + ([f"unknown keys {show(unknown)}"] if unknown
                                                                        else [])
            raise CheckpointError(f"{source}: not XVerse's modulation_adapter config.json: {'; '.join(parts)} "
                                  f"(expected exactly {list(RELEASED_KEYS)})")
        bad = [f"{k}={show(config[k])}" for k in RELEASED_KEYS if not _is_int(config[k])]
        if bad:
            raise CheckpointError(f"{source}: {', '.join(bad)}: every adapter size must be an integer")
        try:
            return cls(**{k: config[k] for k in RELEASED_KEYS}, **transformer)
        except ValueError as err:
            raise CheckpointError(f"{source}: {err}") from None

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        data["lora"] = {k: list(v) for k, v in sorted(self.lora.items())}
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "XVerseConfig":
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as err:
            raise CheckpointError(f"xverse_config metadata is not valid JSON ({type(err).__name__}); the file is "
                                  "damaged") from None
        if not isinstance(data, dict):
            raise CheckpointError("xverse_config metadata is not a JSON object; the file is damaged")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise CheckpointError(f"xverse_config has unknown fields {unknown}; the file was written by a newer "
                                  "RefComp, upgrade RefComp")
        try:
            data["lora"] = {k: tuple(v) for k, v in data.get("lora", {}).items()}
            return cls(**data)
        except (TypeError, ValueError, AttributeError) as err:
            raise CheckpointError(f"xverse_config is not a valid XVerse config ({err}); the file is damaged") from None


def _is_off(module: str) -> bool:
    parts = module.split(".", 2)
    return parts[0] == "single_transformer_blocks" and len(parts) == 3 and parts[2] in SINGLE_LORA_OFF


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive(name: str, value: Any, limit: int) -> None:
    """A size read from a file: a positive int up to `limit` (a hostile file must not build a huge model)."""
    if not _is_int(value) or not 0 < value <= limit:
        raise ValueError(f"XVerseConfig.{name} must be an int in [1, {limit}], got {show(value)}")

"""The toy's frozen parts, saved and loaded as safetensors (one file each, config in
the metadata), and handed to the RefComp trainer in the shape it loads FLUX in.

Files in a weights folder: backbone.safetensors, text.safetensors, clip.safetensors,
dino.safetensors (and refcomp-toy.safetensors, the adapter, written by the pipeline).
`frozen_kwargs()` gives the fields of `training.encoders.Frozen`; `encoder_dims()` the
adapter's encoder widths: this is the "model provider" the trainer plugs in.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch

from .backbone import ToyBackboneConfig, build_backbone
from .packing import PIXELS_PER_TOKEN, DctCodec
from .text import ToyTextConfig, ToyTextEncoder, ToyTokenizer
from .vision import ToyImageEncoder, ToyVisionConfig

if TYPE_CHECKING:
    from refcomp_core import RefCompAdapter

FILES = {"backbone": "backbone.safetensors", "text": "text.safetensors", "clip": "clip.safetensors",
         "dino": "dino.safetensors"}
ADAPTER_FILE = "refcomp-toy.safetensors"
BASE_MODEL = "refcomp-toy-flux"


@dataclass
class ToyParts:
    transformer: torch.nn.Module
    text: ToyTextEncoder
    tokenizer: ToyTokenizer
    clip: ToyImageEncoder
    dino: ToyImageEncoder
    codec: DctCodec
    backbone_config: ToyBackboneConfig
    pixels_per_token: int = PIXELS_PER_TOKEN

    def frozen_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of `training.encoders.Frozen` (T5 and CLIP text share the toy encoder)."""
        return dict(transformer=self.transformer, vae=self.codec, clip_text=self.text, clip_tokenizer=self.tokenizer,
                    t5=self.text, t5_tokenizer=self.tokenizer, clip_vision=self.clip, dino=self.dino)

    def encoder_dims(self) -> dict[str, int]:
        """RefCompConfig's clip_dim / dino_dim / text_dim / visual_dim for this toy."""
        return dict(clip_dim=self.clip.config.projection_dim, dino_dim=self.dino.config.hidden_size,
                    text_dim=self.text.config.hidden_size, visual_dim=self.dino.config.hidden_size)

    def load_adapter(self, path: str) -> "RefCompAdapter":
        """An exported RefComp file for this backbone (dimensions checked), in eval mode."""
        from refcomp_core.checkpoint import load_adapter
        d = self.backbone_config
        adapter, _ = load_adapter(path, hidden_size=d.num_attention_heads * d.attention_head_dim,
                                  num_double_blocks=d.num_layers, num_single_blocks=d.num_single_layers)
        return adapter.eval()

    def freeze(self, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> "ToyParts":
        for m in (self.transformer, self.text, self.clip, self.dino, self.codec):
            m.requires_grad_(False).eval().to(device=device, dtype=dtype)
        return self


def new_parts(seed: int = 0, backbone: ToyBackboneConfig | None = None) -> ToyParts:
    """Fresh (untrained) parts: random backbone and image encoders, the fixed random text encoder."""
    cfg = backbone or ToyBackboneConfig()
    text = ToyTextEncoder(ToyTextConfig(hidden_size=cfg.joint_attention_dim, seed=seed))
    if cfg.pooled_projection_dim != cfg.joint_attention_dim:
        raise ValueError("toy: pooled_projection_dim must equal joint_attention_dim (one text encoder serves both)")
    torch.manual_seed(seed + 1)
    clip = ToyImageEncoder(ToyVisionConfig(role="clip"))
    dino = ToyImageEncoder(ToyVisionConfig(role="dino"))
    return ToyParts(transformer=build_backbone(cfg, seed), text=text, tokenizer=ToyTokenizer(),
                    clip=clip, dino=dino, codec=DctCodec(), backbone_config=cfg)


def save_module(path: str, module: torch.nn.Module, config: dict, dtype: torch.dtype | None = None,
                extra: dict | None = None) -> None:
    """One module + its config (JSON metadata) as safetensors, written atomically."""
    from safetensors.torch import save_file

    tensors = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().cpu().contiguous()
               for k, v in module.state_dict().items()}
    tmp = f"{path}.tmp"
    save_file(tensors, tmp, metadata={"config": json.dumps(config), **{k: json.dumps(v) for k, v in
                                                                      (extra or {}).items()}})
    os.replace(tmp, path)
    os.chmod(path, 0o644)                     # safetensors writes 0600; weights are shared files


def read_module(path: str) -> tuple[dict[str, torch.Tensor], dict, dict]:
    """-> (tensors as float32, config, other metadata)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    if not os.path.isfile(path):
        raise FileNotFoundError(f"toy weights file {path!r} is missing; build the toy weights with `refcomp toy "
                                "reproduce --bundle`, or pass --weights to a folder that has them")
    with safe_open(path, framework="pt") as f:
        meta = f.metadata() or {}
    tensors = {k: v.float() if v.is_floating_point() else v for k, v in load_file(path).items()}
    config = json.loads(meta.pop("config", "{}"))
    return tensors, config, {k: json.loads(v) for k, v in meta.items()}


def save_parts(folder: str, parts: ToyParts, *, which: tuple[str, ...] = tuple(FILES),
               dtype: torch.dtype | None = None) -> None:
    os.makedirs(folder, exist_ok=True)
    modules = {"backbone": (parts.transformer, parts.backbone_config.to_dict()),
               "text": (parts.text, asdict(parts.text.config)),
               "clip": (parts.clip, asdict(parts.clip.config)), "dino": (parts.dino, asdict(parts.dino.config))}
    for name in which:
        module, config = modules[name]
        save_module(os.path.join(folder, FILES[name]), module, config, dtype=dtype)


def load_parts(folder: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> ToyParts:
    """Every frozen part from a weights folder, frozen and moved."""
    tensors, cfg, _ = read_module(os.path.join(folder, FILES["backbone"]))
    backbone_cfg = ToyBackboneConfig(**cfg)
    transformer = build_backbone(backbone_cfg)
    transformer.load_state_dict(tensors)
    t_tensors, t_cfg, _ = read_module(os.path.join(folder, FILES["text"]))
    text = ToyTextEncoder(ToyTextConfig(**t_cfg))
    text.load_state_dict(t_tensors)
    encoders = {}
    for role in ("clip", "dino"):
        v_tensors, v_cfg, _ = read_module(os.path.join(folder, FILES[role]))
        enc = ToyImageEncoder(ToyVisionConfig(**v_cfg))
        enc.load_state_dict(v_tensors)
        encoders[role] = enc
    parts = ToyParts(transformer=transformer, text=text, tokenizer=ToyTokenizer(), clip=encoders["clip"],
                     dino=encoders["dino"], codec=DctCodec(), backbone_config=backbone_cfg)
    return parts.freeze(device, dtype)


def encoder_dims_of(folder: str) -> dict[str, int]:
    """`ToyParts.encoder_dims()` from the files' metadata only (nothing is built)."""
    dims = {}
    for role, key in (("clip", "projection_dim"), ("dino", "hidden_size"), ("text", "hidden_size")):
        _, cfg, _ = read_module(os.path.join(folder, FILES[role]))
        dims[role] = int(cfg.get(key, 64))
    return dict(clip_dim=dims["clip"], dino_dim=dims["dino"], text_dim=dims["text"], visual_dim=dims["dino"])

"""InstanceAssemble's released FLUX.1 files -> one RefComp checkpoint (WEIGHTS_COMPAT §1.2, §1.3).

    convert(layout="flux/layout.pth", lora="flux/pytorch_lora_weights.safetensors", out="ia.safetensors")

- `layout.pth` (a bf16 OrderedDict of tensors) is read with `torch.load(weights_only=True)`; its
  key set and every shape must be exactly `layout_table(spec)` (98,535,936 parameters at FLUX.1
  size), after stripping an optional `module.` / `transformer.` prefix. A `.safetensors` copy of it
  is read the same way.
- The LoRA is parsed in every accepted key form (`lora_keys`); ranks and alphas come from the
  tensors. Only the modules InstanceAssemble switches on are kept (the rest can never act: their
  scale is 0 forever); the count of kept modules is reported, and a file with none is refused.
- The output is a RefComp checkpoint with `layout_pathway = "instanceassemble"` and no identity
  pathway, written atomically, with metadata naming the source files and their SHA-256.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass
from typing import Any

import torch

from ..adapter import RefCompAdapter
from ..checkpoint import save_adapter
from ..config import IA_DOUBLE_SITES, IA_SINGLE_SITES, IAConfig, RefCompConfig
from ..errors import CheckpointError
from ..limits import MAX_FILE_BLOCKS, MAX_FILE_DIM
from ..values import one_line, show
from .lora_keys import DOUBLE_MODULES, SINGLE_MODULES, check_dims, check_metadata, multipliers, parse_lora, site_of
from .tables import key_name, summary, tensor_problem

log = logging.getLogger(__name__)

assert set(DOUBLE_MODULES.values()) == set(IA_DOUBLE_SITES) and set(SINGLE_MODULES.values()) == set(IA_SINGLE_SITES)


@dataclass(frozen=True)
class TargetSpec:
    """The FLUX.1 transformer the released files were trained for (read, never guessed)."""

    hidden_size: int
    num_double_blocks: int
    num_single_blocks: int
    num_heads: int
    text_dim: int
    mlp_hidden: int

    @classmethod
    def from_diffusers_config(cls, config: dict[str, Any]) -> "TargetSpec":
        """From a diffusers FluxTransformer2DModel `config.json` (tests use tiny ones). Every size must be a
        positive integer within the limits a file may declare (refcomp_core.limits)."""
        if not isinstance(config, dict):
            raise CheckpointError(f"transformer config: expected a JSON object, found {type(config).__name__}")
        limits = {"num_attention_heads": MAX_FILE_DIM, "attention_head_dim": MAX_FILE_DIM,
                  "pooled_projection_dim": MAX_FILE_DIM, "num_layers": MAX_FILE_BLOCKS,
                  "num_single_layers": MAX_FILE_BLOCKS}
        for key, limit in limits.items():
            value = config.get(key)
            low = 0 if key == "num_single_layers" else 1
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= limit:
                raise CheckpointError(f"transformer config: {key} must be an integer in [{low}, {limit}], got "
                                      f"{show(value)}; not a diffusers FluxTransformer2DModel config")
        d = config["num_attention_heads"] * config["attention_head_dim"]
        if d > MAX_FILE_DIM:
            raise CheckpointError(f"transformer config: hidden size num_attention_heads x attention_head_dim = {d} is "
                                  f"over {MAX_FILE_DIM}")
        return cls(hidden_size=d, num_double_blocks=config["num_layers"], num_single_blocks=config["num_single_layers"],
                   num_heads=config["num_attention_heads"], text_dim=config["pooled_projection_dim"], mlp_hidden=4 * d)


FLUX1 = TargetSpec(hidden_size=3072, num_double_blocks=19, num_single_blocks=38, num_heads=24, text_dim=768,
                   mlp_hidden=12288)


def layout_table(spec: TargetSpec) -> dict[str, tuple[int, ...]]:
    """Every key of `layout.pth` and its shape (WEIGHTS_COMPAT §1.2)."""
    d, ia = spec.hidden_size, ia_blocks(spec)
    pos = IAConfig(double_blocks=(), single_blocks=(), mlp_hidden=spec.mlp_hidden).position_dim
    table = {"layout_net.text_embedder.linear_1.weight": (d, spec.text_dim),
             "layout_net.text_embedder.linear_1.bias": (d,),
             "layout_net.text_embedder.linear_2.weight": (d, d), "layout_net.text_embedder.linear_2.bias": (d,),
             "layout_net.linears.linear_1.weight": (d // 2, d + pos), "layout_net.linears.linear_1.bias": (d // 2,),
             "layout_net.linears.linear_2.weight": (d, d // 2), "layout_net.linears.linear_2.bias": (d,)}
    blocks = [f"transformer_blocks.{b}" for b in ia[0]] + [f"single_transformer_blocks.{b}" for b in ia[1]]
    for block in blocks:
        table[f"{block}.layout_forward.weight"] = (d, d)
        table[f"{block}.layout_forward.bias"] = (d,)
    return table


def ia_blocks(spec: TargetSpec) -> tuple[tuple[int, ...], tuple[int, ...]]:
    return IAConfig.default_blocks(spec.num_double_blocks)


def lora_site_dims(spec: TargetSpec) -> dict[str, tuple[int, int]]:
    """(in, out) of every module InstanceAssemble switches on, keyed by diffusers module path."""
    d, m = spec.hidden_size, spec.mlp_hidden
    dims = {"img_mod": (d, 6 * d), "txt_mod": (d, 6 * d), "img_mlp_out": (m, d), "txt_mlp_out": (m, d),
            "mod": (d, 3 * d), "mlp_in": (d, m), "out": (d + m, d)}
    double, single = ia_blocks(spec)
    out = {}
    for b in double:
        out.update({f"transformer_blocks.{b}.{k}": dims.get(v, (d, d)) for k, v in DOUBLE_MODULES.items()})
    for b in single:
        out.update({f"single_transformer_blocks.{b}.{k}": dims.get(v, (d, d)) for k, v in SINGLE_MODULES.items()})
    return out


def _site(module: str) -> str:
    """diffusers module path -> our site key ('3.img_q' or 's0.q')."""
    return ".".join(site_of(module))


def _out_rows(spec: TargetSpec) -> dict[str, int]:
    """Output rows of the modules a BFL-fused kohya LoRA may split into."""
    d, m = spec.hidden_size, spec.mlp_hidden
    rows = {}
    for i in range(spec.num_double_blocks):
        for name in ("attn.to_q", "attn.to_k", "attn.to_v", "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"):
            rows[f"transformer_blocks.{i}.{name}"] = d
    for i in range(spec.num_single_blocks):
        rows.update({f"single_transformer_blocks.{i}.attn.to_{x}": d for x in "qkv"})
        rows[f"single_transformer_blocks.{i}.proj_mlp"] = m
    return rows


def read_layout_weights(path: str | os.PathLike, spec: TargetSpec) -> dict[str, torch.Tensor]:
    """The layout net and layout_forward tensors of `layout.pth`, checked exactly against `layout_table`."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"--layout: InstanceAssemble layout file not found: {path}")
    raw = _load_tensors(path, "--layout")
    tensors: dict[str, torch.Tensor] = {}
    for key, value in raw.items():
        name = _strip_prefix(key)
        if name in tensors:
            raise CheckpointError(f"--layout {path}: {key_name(key)} repeats the tensor {key_name(name)} under "
                                  "another prefix; give the layout.pth the method released")
        tensors[name] = value
    table = layout_table(spec)
    missing = sorted(set(table) - set(tensors))
    unexpected = sorted(set(tensors) - set(table))
    problems = []
    if missing:
        problems.append(f"missing keys {missing}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected}")
    for key in sorted(set(table) & set(tensors)):
        problem = tensor_problem(key, tensors[key], table[key])
        if problem:
            problems.append(problem)
    if problems:
        raise CheckpointError(f"--layout {path}: not InstanceAssemble's FLUX.1 layout.pth for a model of hidden size "
                              f"{spec.hidden_size} with {spec.num_double_blocks} double blocks: {summary(problems)}")
    return tensors


def _strip_prefix(key: str) -> str:
    for prefix in ("module.", "transformer."):
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def _load_tensors(path: str, flag: str) -> dict[str, torch.Tensor]:
    """A flat {name: tensor} from a safetensors file or a weights-only pickle."""
    if _is_safetensors(path):
        from safetensors.torch import load_file
        try:
            return load_file(path)
        except Exception as err:           # safetensors raises its own SafetensorError for damaged files
            raise CheckpointError(f"{flag} {path}: a damaged safetensors file ({one_line(err)})") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:               # UnpicklingError, EOFError, RuntimeError (zip), ...
        raise CheckpointError(f"{flag} {path}: cannot be read as a weights-only PyTorch file ({type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''}); it is truncated, damaged, or holds "
                              "more than tensors. Download the released file again") from None
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        bad = type(obj).__name__ if not isinstance(obj, dict) else \
            next(f"{show(k)}: {type(v).__name__}" for k, v in obj.items() if not isinstance(v, torch.Tensor)
                 or not isinstance(k, str))
        raise CheckpointError(f"{flag} {path}: expected a dict of tensors (InstanceAssemble's layout.pth is an "
                              f"OrderedDict of bf16 tensors), found {bad}")
    return dict(obj)


def _is_safetensors(path: str) -> bool:
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def read_lora(path: str | os.PathLike, spec: TargetSpec) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor, float]],
                                                                   int]:
    """InstanceAssemble's LoRA: {site key: (down, up, multiplier)} of the switched-on modules, and
    how many other (dead) modules the file held."""
    from safetensors import safe_open

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"--lora: InstanceAssemble LoRA file not found: {path}")
    if not _is_safetensors(path):
        raise CheckpointError(f"--lora {path}: not a safetensors file; InstanceAssemble releases "
                              "pytorch_lora_weights.safetensors")
    tensors = _load_tensors(path, "--lora")
    try:
        with safe_open(path, "pt") as f:
            metadata = f.metadata()
    except Exception:                      # noqa: BLE001 - the tensors loaded; metadata is only advisory
        metadata = None
    modules = parse_lora(tensors, num_double=spec.num_double_blocks, num_single=spec.num_single_blocks,
                         source=f"--lora {path}", out_rows=_out_rows(spec))
    sites = lora_site_dims(spec)
    live = {m: lora for m, lora in modules.items() if m in sites}
    dead = len(modules) - len(live)
    if not live:
        raise CheckpointError(f"--lora {path}: none of its {len(modules)} LoRA modules is one InstanceAssemble "
                              "switches on (q/k/v/out, the AdaLN and second FFN linears of double blocks "
                              f"{list(ia_blocks(spec)[0])} and single block 0); this is not InstanceAssemble's LoRA")
    check_dims(live, sites, f"--lora {path}", spec.hidden_size)
    check_metadata(metadata, live, f"--lora {path}")
    mult = multipliers(live, f"--lora {path}")
    return {_site(m): (lora.down, lora.up, mult[m]) for m, lora in live.items()}, dead


def build_config(spec: TargetSpec, lora: dict[str, tuple[torch.Tensor, torch.Tensor, float]]) -> RefCompConfig:
    double, single = ia_blocks(spec)
    ia = IAConfig(double_blocks=double, single_blocks=single, mlp_hidden=spec.mlp_hidden, text_dim=spec.text_dim,
                  lora={site: (int(down.shape[0]), mult) for site, (down, _, mult) in lora.items()})
    return RefCompConfig.for_model(hidden_size=spec.hidden_size, num_double_blocks=spec.num_double_blocks,
                                   num_single_blocks=spec.num_single_blocks, num_heads=spec.num_heads,
                                   layout_pathway="instanceassemble", identity=False, instanceassemble=ia)


def to_adapter(layout: dict[str, torch.Tensor], lora: dict[str, tuple[torch.Tensor, torch.Tensor, float]],
               spec: TargetSpec) -> RefCompAdapter:
    """A RefComp adapter holding exactly the released tensors (strict: every key of the adapter is filled)."""
    config = build_config(spec, lora)
    tensors = {}
    for key, value in layout.items():
        if key.startswith("layout_net."):
            tensors["encoder." + key[len("layout_net."):]] = value
        else:
            m = re.match(r"^(transformer_blocks|single_transformer_blocks)\.(\d+)\.layout_forward\.(weight|bias)$", key)
            block = m.group(2) if m.group(1) == "transformer_blocks" else f"s{m.group(2)}"
            tensors[f"assemble_gate.{block}.linear.{m.group(3)}"] = value
    for site, (down, up, _) in lora.items():
        block, name = site.split(".")
        tensors[f"lora.{block}.deltas.{name}.down.weight"] = down.clone()     # fused BFL files share one down
        tensors[f"lora.{block}.deltas.{name}.up.weight"] = up.clone()
    with torch.device("meta"):
        adapter = RefCompAdapter(config)
    missing, unexpected = adapter.load_state_dict(tensors, strict=False, assign=True)
    if missing or unexpected:       # a bug here, never the user's file: the tables above disagree with the adapter
        raise RuntimeError(f"InstanceAssemble conversion: adapter keys missing {missing[:5]}, unexpected "
                           f"{unexpected[:5]}")
    return adapter


def sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def convert(*, layout: str | os.PathLike, lora: str | os.PathLike, out: str | os.PathLike,
            spec: TargetSpec = FLUX1) -> RefCompAdapter:
    """Convert the two released files into one RefComp checkpoint at `out`; returns the adapter."""
    weights = read_layout_weights(layout, spec)
    sites, dead = read_lora(lora, spec)
    adapter = to_adapter(weights, sites, spec)
    log.info("InstanceAssemble: %d layout tensors, %d LoRA modules kept (ranks %s), %d never-switched-on LoRA "
             "modules dropped", len(weights), len(sites), sorted({int(d.shape[0]) for d, _, _ in sites.values()}),
             dead)
    source = {"method": "InstanceAssemble", "layout": os.path.basename(os.fspath(layout)),
              "layout_sha256": sha256(layout), "lora": os.path.basename(os.fspath(lora)), "lora_sha256": sha256(lora),
              "lora_modules": len(sites), "lora_dropped": dead}
    save_adapter(out, adapter, base_model="FLUX.1", source=source)
    return adapter

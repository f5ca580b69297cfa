"""LoRA files in the key forms diffusers' FLUX loader accepts, parsed into one table keyed by
diffusers module path (WEIGHTS_COMPAT §1.3, §2.2).

Accepted forms, each optionally prefixed by `transformer.` (or `base_model.model.`):
- PEFT / diffusers: `<module>.lora_A[.<adapter>].weight` (r, in), `<module>.lora_B[...].weight` (out, r),
  optional `<module>.alpha`;
- kohya with diffusers names: `lora_unet_<module with _>.lora_down.weight` / `.lora_up.weight` / `.alpha`;
- kohya with BFL names (`lora_unet_double_blocks_0_img_attn_qkv`, ...): fused q/k/v (and the
  single block's q/k/v/MLP input) are split row-wise into the diffusers modules, sharing the down
  projection and the alpha.

Multiplier of a module (diffusers 0.33.1, InstanceAssemble's pin): alpha / rank when the file has
alphas (then every module must have one); 1 when it has none and every rank is equal. Mixed ranks
without alphas are refused: diffusers versions disagree on them.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
from dataclasses import dataclass
from typing import Iterable

import torch

from ..errors import CheckpointError
from ..values import one_line
from .tables import key_name, listing

log = logging.getLogger(__name__)

PREFIXES = ("transformer.", "base_model.model.", "unet.")

# diffusers module of a FLUX block -> RefComp's site name (the same names as the views' parts).
DOUBLE_MODULES: dict[str, str] = {
    "norm1.linear": "img_mod", "norm1_context.linear": "txt_mod", "attn.to_q": "img_q", "attn.to_k": "img_k",
    "attn.to_v": "img_v", "attn.add_q_proj": "txt_q", "attn.add_k_proj": "txt_k", "attn.add_v_proj": "txt_v",
    "attn.to_out.0": "img_out", "attn.to_add_out": "txt_out", "ff.net.2": "img_mlp_out",
    "ff_context.net.2": "txt_mlp_out"}
SINGLE_MODULES: dict[str, str] = {"norm.linear": "mod", "attn.to_q": "q", "attn.to_k": "k", "attn.to_v": "v",
                                  "proj_mlp": "mlp_in", "proj_out": "out"}
TOP_MODULES: dict[str, tuple[str, str]] = {"x_embedder": ("x", "x_embedder")}


def site_of(module: str) -> tuple[str, str] | None:
    """diffusers module path -> (block key, site): ("3", "img_q"), ("s0", "q"), ("x", "x_embedder");
    None for a module RefComp has no site for."""
    if module in TOP_MODULES:
        return TOP_MODULES[module]
    m = re.match(r"^(transformer_blocks|single_transformer_blocks)\.(\d+)\.(.+)$", module)
    if m is None:
        return None
    table = DOUBLE_MODULES if m.group(1) == "transformer_blocks" else SINGLE_MODULES
    if m.group(3) not in table:
        return None
    return (m.group(2) if m.group(1) == "transformer_blocks" else f"s{m.group(2)}"), table[m.group(3)]


@dataclass(frozen=True)
class LoRAModule:
    """One module's LoRA: down (r, in) = lora_A, up (out, r) = lora_B, alpha or None."""

    down: torch.Tensor
    up: torch.Tensor
    alpha: float | None

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])


def flux_modules(num_double: int, num_single: int) -> list[str]:
    """Every Linear of a diffusers FluxTransformer2DModel a LoRA may target."""
    double = ["norm1.linear", "norm1_context.linear", "attn.to_q", "attn.to_k", "attn.to_v", "attn.add_q_proj",
              "attn.add_k_proj", "attn.add_v_proj", "attn.to_out.0", "attn.to_add_out", "ff.net.0.proj",
              "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2"]
    single = ["norm.linear", "attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp", "proj_out"]
    top = ["x_embedder", "context_embedder", "proj_out", "norm_out.linear", "time_text_embed.timestep_embedder.linear_1",
           "time_text_embed.timestep_embedder.linear_2", "time_text_embed.guidance_embedder.linear_1",
           "time_text_embed.guidance_embedder.linear_2", "time_text_embed.text_embedder.linear_1",
           "time_text_embed.text_embedder.linear_2"]
    return ([f"transformer_blocks.{i}.{m}" for i in range(num_double) for m in double]
            + [f"single_transformer_blocks.{i}.{m}" for i in range(num_single) for m in single] + top)


def _bfl_fused(num_double: int, num_single: int) -> dict[str, list[str]]:
    """kohya BFL module name (underscored) -> the diffusers modules it holds, in row order."""
    out: dict[str, list[str]] = {}
    for i in range(num_double):
        d = f"transformer_blocks.{i}."
        pairs = {"img_mod_lin": ["norm1.linear"], "txt_mod_lin": ["norm1_context.linear"],
                 "img_attn_qkv": ["attn.to_q", "attn.to_k", "attn.to_v"],
                 "txt_attn_qkv": ["attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"],
                 "img_attn_proj": ["attn.to_out.0"], "txt_attn_proj": ["attn.to_add_out"],
                 "img_mlp_0": ["ff.net.0.proj"], "img_mlp_2": ["ff.net.2"], "txt_mlp_0": ["ff_context.net.0.proj"],
                 "txt_mlp_2": ["ff_context.net.2"]}
        out.update({f"double_blocks_{i}_{k}": [d + m for m in v] for k, v in pairs.items()})
    for i in range(num_single):
        s = f"single_transformer_blocks.{i}."
        out[f"single_blocks_{i}_modulation_lin"] = [s + "norm.linear"]
        out[f"single_blocks_{i}_linear1"] = [s + m for m in ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")]
        out[f"single_blocks_{i}_linear2"] = [s + "proj_out"]
    return out


_PEFT = re.compile(r"^(?P<module>.+?)\.(?P<part>lora_A|lora_B|lora_down|lora_up)(\.[A-Za-z0-9_]+)?\.weight$")
_ALPHA = re.compile(r"^(?P<module>.+?)(\.lora_A|\.lora_down)?\.alpha$")


def _strip(key: str) -> str:
    for prefix in PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def parse_lora(tensors: dict[str, torch.Tensor], *, num_double: int, num_single: int, source: str,
               out_rows: dict[str, int]) -> dict[str, LoRAModule]:
    """All LoRA modules of a file, keyed by diffusers module path.

    out_rows: output rows of each diffusers module (to split BFL-fused up-projections).
    Raises CheckpointError naming every key that is not a LoRA tensor of a FLUX module, and every
    module with a missing half or inconsistent shapes.
    """
    known = set(flux_modules(num_double, num_single))
    underscored = {m.replace(".", "_"): [m] for m in known}
    underscored.update(_bfl_fused(num_double, num_single))
    halves: dict[str, dict[str, torch.Tensor]] = {}
    alphas: dict[str, float] = {}
    unknown: list[str] = []
    for key, value in tensors.items():
        name = _strip(key)
        m, a = _PEFT.match(name), _ALPHA.match(name)
        module = (m or a).group("module") if (m or a) else None
        if module is not None and module.startswith("lora_unet_"):
            module = "kohya:" + module[len("lora_unet_"):]
        elif module is not None and module not in known:
            module = None
        if module is None or (module.startswith("kohya:") and module[6:] not in underscored):
            unknown.append(key)
            continue
        if m:
            part = "down" if m.group("part") in ("lora_A", "lora_down") else "up"
            if part in halves.setdefault(module, {}):
                raise CheckpointError(f"{source}: {key_name(key)} is a second {'lora_A / lora_down' if part == 'down' else 'lora_B / lora_up'} "
                                      f"tensor for module {module} (keys differing only by a prefix or adapter name); "
                                      "give the LoRA file the method released")
            halves[module][part] = value
        else:
            if module in alphas:
                raise CheckpointError(f"{source}: {key_name(key)} is a second alpha for module {module}; give the "
                                      "LoRA file the method released")
            if value.numel() != 1:
                raise CheckpointError(f"{source}: {key_name(key)} should hold one alpha value, has shape "
                                      f"{tuple(value.shape)}")
            alpha = None if value.dtype == torch.bool or value.is_complex() else float(value.float().item())
            if alpha is None or not math.isfinite(alpha):
                raise CheckpointError(f"{source}: {key_name(key)} holds the alpha {alpha}; an alpha is a finite "
                                      "number")
            alphas[module] = alpha
    if unknown:
        raise CheckpointError(f"{source}: {len(unknown)} key(s) are not LoRA tensors of FLUX.1 transformer modules: "
                              f"{_sample(unknown)}; give the LoRA file the method released")
    out: dict[str, LoRAModule] = {}
    for module, parts in sorted(halves.items()):
        if set(parts) != {"down", "up"}:
            missing = "lora_B / lora_up" if "up" not in parts else "lora_A / lora_down"
            raise CheckpointError(f"{source}: module {module} has no {missing} tensor; the file is incomplete")
        down, up = parts["down"], parts["up"]
        if down.ndim != 2 or up.ndim != 2 or down.shape[0] != up.shape[1] or down.shape[0] == 0:
            raise CheckpointError(f"{source}: module {module}: lora_A {tuple(down.shape)} and lora_B "
                                  f"{tuple(up.shape)} do not form a LoRA (A is (rank, in), B is (out, rank))")
        if not (down.is_floating_point() and up.is_floating_point()):
            raise CheckpointError(f"{source}: module {module} has {down.dtype}/{up.dtype} LoRA tensors; expected "
                                  "floating point")
        if not (bool(torch.isfinite(down).all()) and bool(torch.isfinite(up).all())):
            raise CheckpointError(f"{source}: module {module} holds NaN or infinite LoRA values; the file is damaged, "
                                  "download it again")
        targets = underscored[module[6:]] if module.startswith("kohya:") else [module]
        rows = [out_rows.get(t) for t in targets]
        if len(targets) > 1:
            if None in rows or sum(rows) != up.shape[0]:
                raise CheckpointError(f"{source}: fused module {module} has lora_up {tuple(up.shape)}, which does "
                                      f"not split into {targets}")
            ups = torch.split(up, rows, dim=0)
        else:
            ups = (up,)
        for target, part in zip(targets, ups):
            if target in out:
                raise CheckpointError(f"{source}: module {target} has LoRA tensors under two key forms (fused and "
                                      "per-projection); give the LoRA file the method released")
            out[target] = LoRAModule(down=down, up=part, alpha=alphas.get(module))
    orphan = sorted(set(alphas) - set(halves))
    if orphan:
        raise CheckpointError(f"{source}: alpha without LoRA tensors for {_sample(orphan)}")
    return out


def check_dims(modules: dict[str, LoRAModule], dims: dict[str, tuple[int, int]], source: str, hidden_size: int) -> None:
    """Raise CheckpointError naming the first module whose lora_A is not (rank, in) or lora_B not (out, rank),
    with dims: module -> (in, out) of the model the file must fit."""
    for module, lora in modules.items():
        want_in, want_out = dims[module]
        if lora.down.shape[1] != want_in or lora.up.shape[0] != want_out:
            raise CheckpointError(f"{source}: {module} has lora_A {tuple(lora.down.shape)} / lora_B "
                                  f"{tuple(lora.up.shape)}; a model of hidden size {hidden_size} needs "
                                  f"(rank, {want_in}) / ({want_out}, rank)")


def multipliers(modules: dict[str, LoRAModule], source: str) -> dict[str, float]:
    """Effective multiplier per module as diffusers 0.33.1 applies it (see the module docstring)."""
    if not modules:
        return {}
    with_alpha = [m for m, lora in modules.items() if lora.alpha is not None]
    if with_alpha and len(with_alpha) != len(modules):
        missing = sorted(set(modules) - set(with_alpha))
        raise CheckpointError(f"{source}: some LoRA modules carry an alpha and others do not ({_sample(missing)} "
                              "have none); diffusers versions scale such files differently, so RefComp refuses it")
    if with_alpha:
        return {m: lora.alpha / lora.rank for m, lora in modules.items()}
    ranks = sorted({lora.rank for lora in modules.values()})
    if len(ranks) > 1:
        raise CheckpointError(f"{source}: LoRA ranks differ between modules ({ranks}) and the file has no alphas; "
                              "diffusers versions scale such files differently, so RefComp refuses it")
    return {m: 1.0 for m in modules}


def read_lora_file(path: str | os.PathLike, method: str) -> tuple[dict[str, torch.Tensor], dict[str, str] | None]:
    """The tensors and the metadata header of a released `pytorch_lora_weights.safetensors` of `method`.
    Refuses a missing file, a pickle and a damaged file, naming the path."""
    from safetensors import safe_open

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"--lora: {method} LoRA file not found: {path}")
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        raise CheckpointError(f"--lora {path}: not a safetensors file; {method} releases "
                              "pytorch_lora_weights.safetensors")
    try:
        with safe_open(path, "pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    except Exception as err:           # safetensors raises its own SafetensorError for damaged files
        raise CheckpointError(f"--lora {path}: a damaged safetensors file ({one_line(err)})") from None


def check_metadata(metadata: dict[str, str] | None, modules: dict[str, LoRAModule], source: str) -> None:
    """Warn when a `lora_adapter_metadata` header (read by diffusers >= 0.35) would scale differently
    from the diffusers 0.33.1 rule RefComp follows."""
    raw = (metadata or {}).get("lora_adapter_metadata")
    if not raw or not modules:
        return
    try:
        meta = json.loads(raw)
        alpha, rank = float(meta.get("lora_alpha")), float(meta.get("r"))
    except (ValueError, TypeError, AttributeError, OverflowError, RecursionError):
        meta = alpha = rank = None
    if alpha is None or not (math.isfinite(alpha) and math.isfinite(rank) and rank > 0):
        log.warning("%s: lora_adapter_metadata is not readable; ignored (diffusers 0.33.1 semantics)", source)
        return
    ours = {round(lora.alpha / lora.rank if lora.alpha is not None else 1.0, 6) for lora in modules.values()}
    if ours != {round(alpha / rank, 6)}:
        log.warning("%s: its lora_adapter_metadata (alpha %s, r %s) would scale by %.4g in diffusers >= 0.35; "
                    "RefComp follows diffusers 0.33.1 (InstanceAssemble's pin) and scales by %s", source, alpha,
                    rank, alpha / rank, sorted(ours))


def _sample(items: Iterable[str], count: int = 6) -> str:
    return listing(items, count)

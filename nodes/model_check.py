"""Checking an adapter against the FLUX MODEL it will patch, before anything slow runs.

`Load RefComp Model` calls this when its optional `model` input is connected, so an adapter
for another FLUX size fails at load, before Instance Encode runs any encoder.
"""
from __future__ import annotations

from typing import Any

from refcomp_core.errors import CheckpointError

from .flux_views import flux_dims


def check_adapter_for_model(config: Any, model: Any, where: str = "Load RefComp Model") -> None:
    """Raise ModelMismatchError (not FLUX.1) or CheckpointError (other dimensions), naming both numbers."""
    dims = flux_dims(model)
    try:
        config.check_model(hidden_size=dims.hidden_size, num_double_blocks=dims.num_double_blocks,
                           num_single_blocks=dims.num_single_blocks)
        if config.num_heads != dims.num_heads:
            raise CheckpointError(f"this RefComp checkpoint was trained for {config.num_heads} attention heads, "
                                  f"the FLUX model has {dims.num_heads}; load a checkpoint trained for this model")
    except CheckpointError as err:
        raise CheckpointError(f"{where}: {err}") from None


def check_box_count(layout: Any, config: Any, where: str = "Instance Encode") -> None:
    """Refuse a layout with more boxes than the adapter takes, before the encoders run."""
    if len(layout.instances) > config.max_instances:
        raise CheckpointError(f"{where}: the layout has {len(layout.instances)} boxes, this checkpoint takes at most "
                              f"{config.max_instances}; remove boxes")


def check_xverse_for_model(config: Any, model: Any, where: str = "Load RefComp Model") -> None:
    """An XVerse file is for FLUX.1 (hidden size = its out_dim, its double-block count)."""
    dims = flux_dims(model)
    for what, ours, theirs in (("hidden size", config.out_dim, dims.hidden_size),
                               ("double-block count", config.num_double_blocks, dims.num_double_blocks)):
        if ours != theirs:
            raise CheckpointError(f"{where}: this XVerse file is for a FLUX model with {what} {ours}, the model has "
                                  f"{what} {theirs}; XVerse was released for FLUX.1-dev")

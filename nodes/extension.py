"""The V3 extension: registers the model folder and lists the nodes."""
from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .runtime import register_folder
from .v3_compose import RefCompAlphaPredictor, RefCompApplyFLUX, RefCompInstanceEncode
from .v3_inputs import RefCompLayoutCanvas, RefCompLayoutPreview, RefCompLoader, RefCompLoadReferenceSet

NODES: list[type[io.ComfyNode]] = [RefCompLoader, RefCompLoadReferenceSet, RefCompLayoutCanvas, RefCompAlphaPredictor,
                                   RefCompInstanceEncode, RefCompApplyFLUX, RefCompLayoutPreview]


class RefCompExtension(ComfyExtension):
    async def on_load(self) -> None:
        register_folder()

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> RefCompExtension:
    register_folder()
    return RefCompExtension()

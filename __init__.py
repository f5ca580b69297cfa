"""RefComp ComfyUI node pack entry point.

Inside ComfyUI this exports `comfy_entrypoint` (V3 nodes) and `WEB_DIRECTORY`.
Without ComfyUI (e.g. pytest collecting the repo) it exports nothing and never fails.
"""
import logging
import os
import sys

_PACK_DIR = os.path.dirname(os.path.abspath(__file__))
# refcomp_core is a top-level package next to this file; append (never prepend) so the
# pack's `nodes/` folder can never shadow ComfyUI's own `nodes` module.
if _PACK_DIR not in sys.path:
    sys.path.append(_PACK_DIR)

try:
    import comfy_api.latest  # noqa: F401
    import folder_paths  # noqa: F401
    _HAS_COMFY = bool(__package__)
except ImportError:
    _HAS_COMFY = False

if _HAS_COMFY:
    from .nodes.extension import comfy_entrypoint

    WEB_DIRECTORY = "./web"
    __all__ = ["comfy_entrypoint", "WEB_DIRECTORY"]
else:
    logging.getLogger(__name__).debug("RefComp: ComfyUI not importable; the node pack exports nothing")
    __all__ = []

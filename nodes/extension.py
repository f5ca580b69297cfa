"""The V3 extension: registers the model folder, the canvas's thumbnail routes, and lists the nodes."""
from __future__ import annotations

import asyncio
import logging

from comfy_api.latest import ComfyExtension, io

from . import reference_preview as preview
from .runtime import register_folder
from .v3_compose import RefCompAlphaPredictor, RefCompApplyFLUX, RefCompInstanceEncode
from .v3_inputs import RefCompLayoutCanvas, RefCompLayoutPreview, RefCompLoader, RefCompLoadReferenceSet
from .v3_xverse import RefCompXVerseEncode

log = logging.getLogger(__name__)

NODES: list[type[io.ComfyNode]] = [RefCompLoader, RefCompLoadReferenceSet, RefCompLayoutCanvas, RefCompAlphaPredictor,
                                   RefCompInstanceEncode, RefCompApplyFLUX, RefCompLayoutPreview, RefCompXVerseEncode]
_routes_added = False


def register_routes() -> None:
    """GET /refcomp/references?folder=F (names + thumbnail URLs of an input subfolder) and
    GET /refcomp/thumbnail?folder=F&name=N (a PNG thumbnail). Both stay inside the input folder.
    Without a running server (e.g. a headless executor) there is nothing to register."""
    global _routes_added
    try:
        import folder_paths
        from aiohttp import web
        from server import PromptServer
    except ImportError:
        return
    server = getattr(PromptServer, "instance", None)
    if server is None or _routes_added:
        return
    _routes_added = True

    def error(err: Exception) -> web.Response:
        status = 404 if isinstance(err, FileNotFoundError) else 400
        return web.json_response({"error": str(err)}, status=status)

    @server.routes.get(preview.ROUTE_LIST)
    async def list_references(request: web.Request) -> web.Response:
        try:
            return web.json_response(preview.folder_listing(folder_paths.get_input_directory(),
                                                            request.query.get("folder", "")))
        except (ValueError, FileNotFoundError) as err:
            return error(err)

    @server.routes.get(preview.ROUTE_THUMB)
    async def thumbnail(request: web.Request) -> web.Response:
        try:
            path = preview.thumbnail_path(folder_paths.get_input_directory(), request.query.get("folder", ""),
                                          request.query.get("name", ""))
            png = await asyncio.to_thread(preview.thumbnail_png, path)
        except (ValueError, FileNotFoundError, OSError) as err:
            return error(err)
        return web.Response(body=png, content_type="image/png", headers={"Cache-Control": "max-age=3600"})


class RefCompExtension(ComfyExtension):
    async def on_load(self) -> None:
        register_folder()
        register_routes()

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> RefCompExtension:
    register_folder()
    register_routes()
    return RefCompExtension()

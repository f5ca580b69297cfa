"""ComfyUI glue of the RefComp node pack.

Pure helpers (references, layout_tools, encoding, flux_views) import no ComfyUI
module at import time and are tested host-free; `flux_host`/`flux_apply` hold the
FLUX host and `v3_*` the V3 node schemas. Never import this package as a top-level
`nodes` (ComfyUI owns that name): the pack root imports it relatively.
"""

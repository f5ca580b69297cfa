#!/usr/bin/env bash
# The README's test command: the whole suite, real-ComfyUI tests included.
# Makes (or reuses) ComfyUI 0.29.0, its venv and the newest frontend in a cache outside the
# repository (.ci/comfyui_env.sh), then runs pytest with any arguments given.
set -euo pipefail
cd "$(dirname "$0")/.."
source .ci/comfyui_env.sh
exec .venv/bin/python -m pytest "$@"

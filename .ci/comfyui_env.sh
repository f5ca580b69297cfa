#!/usr/bin/env bash
# Source this file (from the repository root) to get a real ComfyUI for the integration tests:
#   COMFYUI_PATH, COMFYUI_PYTHON        ComfyUI 0.29.0 source tree and its venv (frontend 1.47.10 pinned)
#   COMFYUI_FRONTEND_NEWEST             static/ folder of the newest comfyui-frontend-package we test
#                                       (served with main.py --front-end-root)
# Variables already set are kept. Otherwise it unpacks ../shared/comfyui/ComfyUI-0.29.0.tar.gz and makes
# its venv with ../shared/comfyui-env/setup-venv.sh (~2.5 min, 2.3 GB, once), and installs the frontend
# package with pip --target, all into a cache outside the repository (reused when present):
#   REFCOMP_CACHE   cache folder (default ${XDG_CACHE_HOME:-$HOME/.cache}/refcomp)
#   REFCOMP_SHARED  the shared/ folder (default ../shared, beside the repository)
#   REFCOMP_FRONTEND_VERSION  newest frontend to test (default below; bump it when a new one is out)

_refcomp_comfyui_env() {
  local root cache shared tarball name venv fe_version fe_dir
  root=$(pwd)
  cache=${REFCOMP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/refcomp}
  shared=${REFCOMP_SHARED:-$root/../shared}
  mkdir -p "$cache"
  cache=$(cd "$cache" && pwd)

  if [ -z "${COMFYUI_PATH:-}" ] || [ -z "${COMFYUI_PYTHON:-}" ]; then
    tarball="$shared/comfyui/ComfyUI-0.29.0.tar.gz"
    name=ComfyUI-0.29.0
    venv="$cache/comfyui-venv"
    if [ ! -f "$cache/$name/main.py" ]; then
      [ -f "$tarball" ] || { echo "comfyui_env: $tarball not found (set REFCOMP_SHARED or COMFYUI_PATH)" >&2; return 1; }
      echo "comfyui_env: unpacking $tarball into $cache" >&2
      rm -rf "$cache/$name.partial" && mkdir -p "$cache/$name.partial"
      tar -xzf "$tarball" -C "$cache/$name.partial" || return 1
      rm -rf "${cache:?}/$name" && mv "$cache/$name.partial/$name" "$cache/$name" && rm -rf "$cache/$name.partial"
    fi
    if [ ! -f "$venv/.refcomp-ready" ]; then
      echo "comfyui_env: making ComfyUI's venv in $venv (a few minutes, once)" >&2
      bash "$shared/comfyui-env/setup-venv.sh" "$cache/$name" "$venv" >&2 || return 1
      touch "$venv/.refcomp-ready"
    fi
    export COMFYUI_PATH="$cache/$name" COMFYUI_PYTHON="$venv/bin/python"
  fi

  if [ -z "${COMFYUI_FRONTEND_NEWEST:-}" ]; then
    fe_version=${REFCOMP_FRONTEND_VERSION:-1.58.1}
    fe_dir="$cache/frontend-$fe_version"
    if [ ! -f "$fe_dir/.refcomp-ready" ]; then
      echo "comfyui_env: installing comfyui-frontend-package==$fe_version into $fe_dir" >&2
      rm -rf "$fe_dir"
      "$COMFYUI_PYTHON" -m pip install -q --no-deps --target "$fe_dir" "comfyui-frontend-package==$fe_version" >&2 || return 1
      touch "$fe_dir/.refcomp-ready"
    fi
    export COMFYUI_FRONTEND_NEWEST="$fe_dir/comfyui_frontend_package/static"
  fi
  echo "comfyui_env: COMFYUI_PATH=$COMFYUI_PATH COMFYUI_FRONTEND_NEWEST=$COMFYUI_FRONTEND_NEWEST" >&2
}
_refcomp_comfyui_env

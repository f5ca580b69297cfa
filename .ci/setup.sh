#!/usr/bin/env bash
# RefComp developer set-up (the README's set-up command). Idempotent.
# - .venv with the package and its test/dev set (CPU torch 2.13.0 pinned there, never in the pack)
# - node packages for the canvas tests (playwright-core drives Debian's chromium; no browser download)
# - Debian chromium and g++, when missing and we can install them
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q -e ".[dev]"
npm ci --silent --no-audit --no-fund
# Debian packages the tests use: chromium (canvas tests), g++ (torch.compile's CPU code generation)
missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v g++ >/dev/null || missing+=(g++)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "warning: missing ${missing[*]}; install them (apt-get install ${missing[*]}) for the canvas browser and torch.compile tests" >&2
  fi
fi
echo "set-up done: .venv ready, node packages installed, chromium at $(command -v chromium || echo MISSING), g++ at $(command -v g++ || echo MISSING)"

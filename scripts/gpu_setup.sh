#!/usr/bin/env bash
# Prepare the GPU machine (device tool: torch and Triton preinstalled, no network) for a
# GPU test or benchmark pass.  Run from the repository root there, before anything timed:
#
#   bash scripts/gpu_setup.sh && python -m pytest tests/gpu -q -p no:cacheprovider
#
# 1. artcache installed as a user installs it, so backend="artcache" resolves through its
#    torch_dynamo_backends entry point (no network: no build isolation, no dependencies).
# 2. site-packages compiled to bytecode, as pip does at install time.  That machine ships no
#    .pyc files and sets PYTHONDONTWRITEBYTECODE=1, so every process would compile the source
#    of every module it imports (1-3 s per process, profiled), in every benchmark variant.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
"$PY" -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps -e .
site=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
start=$(date +%s)
# Some packages ship files that are not valid for this Python (templates, test data):
# compileall reports them and goes on; they are never imported.
"$PY" -m compileall -q -j 0 "$site" artcache benchmarks tests examples >/dev/null 2>&1 || true
echo "gpu_setup: artcache installed; bytecode compiled in $(( $(date +%s) - start )) s ($site)"

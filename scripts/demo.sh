#!/usr/bin/env bash
# The main job on a fresh machine: install, compile a model cold in one process,
# warm-start it from the store in a second process, then inspect the stored entry.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -m pip install -q --disable-pip-version-check "torch==2.13.0" -e .
export ARTCACHE_STORE=${ARTCACHE_STORE:-file://$(mktemp -d)/artcache}
echo "store: $ARTCACHE_STORE"
# Fresh torch cache dirs for each process: the warm start must not lean on torch's caches.
cold=$(TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) "$PY" examples/mlp_demo.py --json | tail -n 1)
echo "cold: $cold"
warm=$(TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) "$PY" examples/mlp_demo.py --json | tail -n 1)
echo "warm: $warm"
"$PY" - "$cold" "$warm" <<'PYEOF'
import json, sys
cold, warm = (json.loads(a) for a in sys.argv[1:3])
print(f"first call: cold {cold['first_call_s']:.2f} s, warm {warm['first_call_s']:.2f} s, "
      f"speed-up {cold['first_call_s'] / warm['first_call_s']:.1f}x")
PYEOF
artcache ls
entry=$(artcache ls --format json | "$PY" -c "import json,sys; print(json.load(sys.stdin)['entries'][0]['key'])")
artcache inspect --graph "$entry"

#!/usr/bin/env bash
# Set up a fresh machine and run the test suite.  Used by README.md and .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# torch is pinned to the CPU build that lies on this machine's disk: an unpinned torch
# would pull a multi-GB CUDA build.
"$PY" -m pip install -q --disable-pip-version-check "torch==2.13.0" -e ".[dev]"
if ! command -v redis-server >/dev/null 2>&1; then
  # Redis tests start their own server on a free loopback port; install it when missing.
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null) \
    || echo "warning: could not install redis-server; Redis tests will be skipped" >&2
fi
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
  # HTTP store tests start their own nginx (WebDAV) on a free loopback port; install it when missing.
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null) \
    || echo "warning: could not install nginx; HTTP store tests will be skipped" >&2
fi
# Two workers, whole files each (--dist loadfile: a file's module fixtures stay in one
# process): most tests wait on compiles in subprocesses, and a 2-core machine runs two.
exec "$PY" -m pytest -q -n 2 --dist loadfile "$@"

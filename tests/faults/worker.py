"""A compile worker for fault tests: compiles corpus programs with backend=artcache and
checks them against eager, in its own process.

    python -m tests.faults.worker --programs a,b [--slow-save MARKER] [--fsize-limit BYTES]

``--slow-save`` sleeps between store writes (after touching MARKER at the first one) so a
test can SIGKILL the process inside a save; ``--fsize-limit`` makes the disk "full" for
files larger than BYTES from the first save on (RLIMIT_FSIZE).  Both are test harness
patches applied here, never hooks in artcache itself.
"""

from __future__ import annotations

import argparse
import json
import resource
import signal
import sys
import time
from pathlib import Path

import torch

from tests.corpus.programs import PROGRAMS
from tests.corpus.runner import run_program


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--programs", required=True)
    parser.add_argument("--slow-save", default="")
    parser.add_argument("--fsize-limit", type=int, default=0)
    args = parser.parse_args()
    import artcache
    from artcache.store import LocalStore

    if args.slow_save:
        marker = Path(args.slow_save)
        original_put = LocalStore.put

        def slow_put(self: LocalStore, key: str, data: bytes) -> None:
            marker.touch()
            time.sleep(0.02)
            original_put(self, key, data)

        LocalStore.put = slow_put  # type: ignore[method-assign]
    if args.fsize_limit:
        original_save = artcache.Cache.save

        def full_disk_save(self: artcache.Cache, *a: object, **k: object) -> object:
            # Ignore SIGXFSZ so an oversized write fails with EFBIG instead of killing us.
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (args.fsize_limit, args.fsize_limit))
            return original_save(self, *a, **k)  # type: ignore[arg-type]

        artcache.Cache.save = full_disk_save  # type: ignore[method-assign]
    cache = artcache.Cache()
    backend = cache.backend()
    ok = {}
    for name in args.programs.split(","):
        torch._dynamo.reset()
        got = run_program(PROGRAMS[name], lambda fn: torch.compile(fn, backend=backend))
        want = run_program(PROGRAMS[name], None)
        ok[name] = all(
            a.shape == b.shape and (torch.allclose(a.float(), b.float(), atol=1e-4, rtol=1e-3) or "rng" in PROGRAMS[name].tags)
            for kind in ("outputs", "grads", "inputs_after", "buffers") for a, b in zip(got[kind], want[kind])
        )
    s = cache.stats()
    print(json.dumps({"ok": ok, "hits": s.hits, "misses": s.misses, "saves": s.saves, "errors": s.errors}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

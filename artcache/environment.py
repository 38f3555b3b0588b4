"""The environment fingerprint: what a compiled artifact's validity depends on beyond
its graph and config (torch build, Triton, CUDA, GPU capability, CPU ISA, Python).

Built without starting a subprocess or hashing installed sources (torch's own warm path
probes the C++ compiler in subprocesses and hashes torch's sources, which dominates its
warm start on a CPU): versions, build hashes and ``/proc/cpuinfo`` flags identify the same
things for a fraction of the cost.
"""

from __future__ import annotations

import platform
import sys
from collections.abc import Iterable
from importlib import metadata

import torch

from .entry import FORMAT_VERSION

# CPU features that change which vector code Inductor's C++ backend emits (its VecISA
# probing selects among these); a kernel built for avx512 must not load on an avx2 host.
_ISA_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16", "avx512_fp16",
              "amx_tile", "amx_bf16", "amx_int8", "fma", "f16c", "asimd", "sve", "neon")


def cpu_isa(cpuinfo: str | None = None) -> str:
    """The ISA flags present on this CPU, from ``/proc/cpuinfo`` (no compiler probe)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                cpuinfo = f.read(65536)
        except OSError:
            cpuinfo = ""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[-1].split())
            break
    return platform.machine() + ":" + ",".join(f for f in _ISA_FLAGS if f in flags)


def _dist_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


def fingerprint(device_types: Iterable[str] = ()) -> dict[str, str]:
    """Name -> value of every environment factor.  ``device_types`` are those the graph
    touches; GPU capability is only queried for ``cuda`` (that initializes CUDA, which a
    CUDA graph needs anyway)."""
    env = {
        "artcache_format": str(FORMAT_VERSION),
        "python": f"{sys.implementation.name} {platform.python_version()}",
        "torch": torch.__version__,
        "torch_git": torch.version.git_version,
        "cuda": str(torch.version.cuda),
        "hip": str(torch.version.hip),
        "platform": f"{sys.platform} {platform.machine()} {'-'.join(platform.libc_ver())}",
        "cpu_isa": cpu_isa(),
    }
    devices = set(device_types)
    if "cuda" in devices:
        env["triton"] = _dist_version("triton") if _dist_version("triton") != "absent" else _dist_version("pytorch-triton")
        index = torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        env["gpu"] = f"sm_{major}{minor}"  # capability, not the SKU name: kernels are valid across SKUs
    return env

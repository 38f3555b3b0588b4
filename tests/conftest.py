"""Shared fixtures.  Tests run artcache for real: real stores on disk, real processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def pytest_configure(config: pytest.Config) -> None:
    """Nothing the tests run writes under the user's own cache directory: default stores
    and the stats of Redis- and HTTP-only stores go under ``$XDG_CACHE_HOME``, which every
    test process (and every process it starts) sees pointing at a temporary directory."""
    if not hasattr(config, "workerinput"):
        import tempfile

        os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="artcache-tests-xdg-")


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    path = tmp_path / "store"
    path.mkdir()
    return path


@pytest.fixture
def store_url(store_dir: Path) -> str:
    return "file://" + str(store_dir)


def run_python(code: str, *, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter (warm-start claims are only proven there)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("ARTCACHE_")}
    full_env["PYTHONPATH"] = str(REPO) + os.pathsep + full_env.get("PYTHONPATH", "")
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-c", code], env=full_env, capture_output=True, text=True, timeout=timeout
    )


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The ``artcache`` command as a user runs it, in its own process."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("ARTCACHE_")}
    full_env["PYTHONPATH"] = str(REPO) + os.pathsep + full_env.get("PYTHONPATH", "")
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "artcache.cli", *args], env=full_env, capture_output=True, text=True, timeout=300
    )


def keypair_envs(tmp: Path, store: str) -> tuple[dict[str, str], dict[str, str]]:
    """The environments of a writer signing with a new key and of a reader trusting only
    that key, both over ``store`` (the key files go under ``tmp``)."""
    import json

    proc = run_cli("keygen", "--out", str(tmp / "writer"), "--format", "json")
    assert proc.returncode == 0, proc.stderr
    key = json.loads(proc.stdout)
    return ({"ARTCACHE_STORE": store, "ARTCACHE_SIGNING_KEY": key["private_path"]},
            {"ARTCACHE_STORE": store, "ARTCACHE_TRUSTED_KEYS": key["public_key"]})


def run_phase(program: str, phase: str, tmp: Path, env: dict[str, str], *,
              weights_only: bool = True) -> dict[str, object]:
    """Run ``program`` for one phase in a fresh process, with ``sys.argv`` set to
    ``[_, phase, result file]`` and its own empty Inductor cache dir: the result file it
    saved (torch.save) and the JSON line it printed last."""
    import json

    import torch

    name = phase.replace(":", "-")
    out = tmp / f"{name}.pt"
    full = {"TORCHINDUCTOR_CACHE_DIR": str(tmp / f"ind-{name}"), **env}
    proc = run_python(f"import sys; sys.argv = ['x', {phase!r}, {str(out)!r}]\n" + program, env=full, timeout=900)
    assert proc.returncode == 0, f"{phase} failed:\n{proc.stderr[-6000:]}"
    return {"results": torch.load(out, weights_only=weights_only),  # our own result file
            "info": json.loads(proc.stdout.strip().splitlines()[-1])}

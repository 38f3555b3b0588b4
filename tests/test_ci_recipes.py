"""README's CI recipes run as written.

Each recipe's blocks are taken from README's "CI recipes" section and their shell steps
run for real, twice: a cold job, then a warm job in a fresh workspace and a fresh home,
as a CI runner gives.  What the CI system provides is played by directories (the
GitHub/GitLab cache: a directory per cache key, restored before the job and saved after
it) and by a real ``redis-server`` on loopback.  The job's own step (``python train.py``)
compiles a small function with ``torch.compile(backend="artcache")``; the warm job must
load it from the cache (hits, no misses), counted by the job's own ``artcache stats``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from artcache import Cache, NewBlob
from artcache.config import Settings

from .conftest import REPO
from .redis_server import RedisServer, fresh_redis_server  # noqa: F401

yaml = pytest.importorskip("yaml", reason="PyYAML is not installed (the dev extra installs it)")

pytestmark = pytest.mark.slow

# One matmul (an extern kernel): a real Inductor compile that needs no C++ compiler, so a
# cold job takes seconds; what the recipes carry does not depend on what an entry holds.
TRAIN = """
import torch

@torch.compile(backend="artcache")
def step(x, w):
    return x @ w

print(step(torch.ones(4, 8), torch.ones(8, 3)).tolist())
"""
REDIS_PLACEHOLDER = "artcache-redis.internal:6379"


def recipe(title: str) -> list[tuple[str, str]]:
    """The fenced blocks (language, text) of README's CI recipe whose heading starts with ``title``."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("\n## CI recipes\n", 1)[1].split("\n## ", 1)[0]
    for part in section.split("\n### ")[1:]:
        if part.startswith(title):
            return re.findall(r"```(\w+)\n(.*?)```", part, re.S)
    raise AssertionError(f"README has no CI recipe {title!r}")


class Runner:
    """A CI machine: fresh workspace and home per job, ``artcache`` and ``python`` on PATH."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.bin = tmp / "bin"
        self.bin.mkdir()
        for name, command in (("artcache", f'"{sys.executable}" -m artcache.cli'), ("python", f'"{sys.executable}"')):
            shim = self.bin / name
            shim.write_text(f'#!/bin/sh\nexec {command} "$@"\n')
            shim.chmod(0o755)
        self.jobs = 0

    def job(self) -> tuple[Path, dict[str, str]]:
        self.jobs += 1
        workspace, home = self.tmp / f"job{self.jobs}" / "work", self.tmp / f"job{self.jobs}" / "home"
        workspace.mkdir(parents=True)
        home.mkdir()
        (workspace / "train.py").write_text(TRAIN)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ARTCACHE_", "XDG_", "TORCHINDUCTOR_"))}
        env.update(
            HOME=str(home),
            PATH=f"{self.bin}{os.pathsep}{env.get('PATH', '')}",
            PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
            TORCHINDUCTOR_CACHE_DIR=str(home / "inductor"),  # no help from torch's own caches
        )
        return workspace, env

    @staticmethod
    def shell(script: str, cwd: Path, env: dict[str, str]) -> None:
        proc = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"step failed ({proc.returncode}):\n{script}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


def stats(store_url: str, env: dict[str, str]) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "artcache.cli", "--store", store_url, "stats", "--format", "json"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def assert_cold(doc: dict[str, Any]) -> None:
    assert doc["misses"] >= 1 and doc["saves"] >= 1 and doc["hits"] == 0, doc


def assert_warm(doc: dict[str, Any]) -> None:
    assert doc["hits"] >= 1 and doc["misses"] == 0 and doc["saves"] == 0, doc


# -- GitHub Actions -----------------------------------------------------------------------
def _github_job(steps: list[dict[str, Any]], runner: Runner, storage: Path, sha: str) -> tuple[Path, dict[str, str]]:
    workspace, env = runner.job()
    context = {"runner.os": "Linux", "github.sha": sha}

    def expand(text: str) -> str:
        out = re.sub(r"\$\{\{\s*([\w.]+)\s*\}\}", lambda m: context[m.group(1)], str(text))
        assert "${{" not in out, out
        return out

    cache = next(s["with"] for s in steps if str(s.get("uses", "")).startswith("actions/cache@"))
    path, key = workspace / cache["path"], expand(cache["key"])
    restore_keys = [k.strip() for k in expand(cache.get("restore-keys", "")).splitlines() if k.strip()]
    # actions/cache, restore: the exact key, else the newest entry under a restore key.
    candidates = [storage / key] if (storage / key).is_dir() else sorted(
        (d for d in storage.iterdir() if any(d.name.startswith(k) for k in restore_keys)),
        key=lambda d: d.stat().st_mtime)[-1:]
    if candidates:
        shutil.copytree(candidates[-1], path)
    for step in steps:  # every step must pass, so `if: always()` changes nothing here
        uses = str(step.get("uses", ""))
        if uses:
            assert uses.startswith(("actions/checkout@", "actions/cache@")), uses
            continue
        runner.shell(expand(step["run"]), workspace, env)
    # actions/cache, post step: save under the key unless it was restored exactly.
    if not (storage / key).is_dir() and path.is_dir():
        shutil.copytree(path, storage / key)
    return workspace, env


def test_github_actions_recipe(tmp_path: Path) -> None:
    [(lang, text)] = recipe("GitHub Actions")
    assert lang == "yaml"
    steps = yaml.safe_load(text)["steps"]
    runner, storage = Runner(tmp_path), tmp_path / "actions-cache"
    storage.mkdir()
    _ws, env = _github_job(steps, runner, storage, sha="1" * 40)
    default_store = f"file://{env['HOME']}/.cache/artcache"
    assert_cold(stats(default_store, env))
    assert len(list(storage.iterdir())) == 1
    _ws, env = _github_job(steps, runner, storage, sha="2" * 40)  # next commit: restored by restore-keys
    assert_warm(stats(f"file://{env['HOME']}/.cache/artcache", env))


# -- GitLab CI ------------------------------------------------------------------------------
def _gitlab_job(job: dict[str, Any], runner: Runner, storage: Path) -> tuple[Path, dict[str, str]]:
    workspace, env = runner.job()
    env.update(CI_PROJECT_DIR=str(workspace), CI_JOB_NAME="train")

    def expand(value: object) -> str:  # GitLab expands $NAME and ${NAME} in variables and cache keys
        return re.sub(r"\$\{?(\w+)\}?", lambda m: env[m.group(1)], str(value))

    for name, value in job.get("variables", {}).items():
        env[name] = expand(value)
    cache = job["cache"]
    key = expand(cache["key"])
    if (storage / key).is_dir():
        shutil.copytree(storage / key, workspace, dirs_exist_ok=True)
    # The runner runs before_script and script in one shell that stops at the first failure.
    runner.shell("\n".join(job.get("before_script", []) + job["script"]), workspace, env)
    assert cache.get("when") == "always"
    for rel in cache["paths"]:
        if (workspace / rel).exists():
            shutil.copytree(workspace / rel, storage / key / rel, dirs_exist_ok=True)
    return workspace, env


def test_gitlab_recipe(tmp_path: Path) -> None:
    [(lang, text)] = recipe("GitLab CI")
    assert lang == "yaml"
    job = yaml.safe_load(text)["train"]
    runner, storage = Runner(tmp_path), tmp_path / "gitlab-cache"
    storage.mkdir()
    ws, env = _gitlab_job(job, runner, storage)
    assert_cold(stats(f"file://{ws}/.artcache-store", env))
    ws, env = _gitlab_job(job, runner, storage)
    assert_warm(stats(f"file://{ws}/.artcache-store", env))
    # A damaged cached bundle imports nothing: the job still passes, compiles cold and
    # leaves a good bundle behind.
    [bundle] = storage.rglob("*.bundle")
    bundle.write_bytes(bundle.read_bytes()[:-100])
    ws, env = _gitlab_job(job, runner, storage)
    assert_cold(stats(f"file://{ws}/.artcache-store", env))
    ws, env = _gitlab_job(job, runner, storage)
    assert_warm(stats(f"file://{ws}/.artcache-store", env))


# -- a shared Redis tier with signing ---------------------------------------------------------
def test_shared_redis_recipe_with_signing(tmp_path: Path, fresh_redis_server: RedisServer) -> None:  # noqa: F811
    pytest.importorskip("nacl")
    [(lang_keys, keygen), (lang_job, job)] = recipe("A shared Redis tier with signing")
    assert (lang_keys, lang_job) == ("bash", "bash") and job.count(REDIS_PLACEHOLDER) == 1
    job = job.replace(REDIS_PLACEHOLDER, f"127.0.0.1:{fresh_redis_server.port}")
    runner = Runner(tmp_path)
    repo = tmp_path / "repo"  # the project: its committed public key goes into every job's checkout
    repo.mkdir()
    runner.shell(keygen, repo, runner.job()[1])
    secret = (repo / "artcache-ci.key").read_text().strip()
    assert (repo / "ci" / "artcache-ci.pub").is_file()

    def run_job(signing_key: str | None) -> dict[str, str]:
        workspace, env = runner.job()
        shutil.copytree(repo / "ci", workspace / "ci")
        if signing_key:
            env["ARTCACHE_SIGNING_KEY"] = signing_key
        runner.shell(job, workspace, env)
        env["ARTCACHE_TRUSTED_KEYS"] = str(workspace / "ci" / "artcache-ci.pub")
        return env

    writer = run_job(secret)  # a protected branch: compiles, signs, shares
    assert_cold(stats(f"file://{writer['HOME']}/.cache/artcache", writer))
    reader = run_job(None)  # a merge request: a fresh machine, loads from Redis
    assert_warm(stats(f"file://{reader['HOME']}/.cache/artcache", reader))

    # Someone with write access to the Redis but not the key plants an unsigned entry:
    # verify (with the recipe's variables) reports it and exits 1.
    redis_url = re.search(r"redis://\S+?(?=\")", job)
    assert redis_url is not None
    Cache(store=redis_url.group(0), settings=Settings(store_urls=("memory://",)), strict=True).save(
        "e" * 64, [NewBlob("code", b"print('not yours')")], factors={}, environment={})
    store = f"file://{reader['HOME']}/.cache/artcache,{redis_url.group(0)}"
    proc = subprocess.run([sys.executable, "-m", "artcache.cli", "--store", store, "verify"], env=reader,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "untrusted" in proc.stdout and "e" * 16 in proc.stdout, proc.stdout + proc.stderr

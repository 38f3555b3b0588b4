"""Summarize the reliability suites into benchmarks/results/reliability.md.

    python -m pytest tests -q --junitxml=/tmp/junit.xml      # or only the suites below
    python benchmarks/reliability.py --junit /tmp/junit.xml --out benchmarks/results/reliability.md

Every row is a test file whose assertions check that no entry is lost or served wrong;
the last column counts failed cases, each of which would be such an entry (it must be 0).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

SUITES = {
    "tests/test_warm_start.py": "34-program corpus: cold vs warm (fresh process, tripwires) vs eager; changed factors miss",
    "tests/test_program_fuzz.py": "CI slice of the fuzzing campaign (tests/fuzz/campaign.py): kept condition hits bitwise, changed condition misses",
    "tests/test_fuzz_reproducers.py": "replays of the campaign's failing programs (tests/fuzz/reproducers)",
    "tests/test_key_completeness.py": "every input of torch's FX graph / AOTAutograd keys has a counterpart; each flipped changes the key",
    "tests/test_allowlist_gaps.py": "former allowlist gaps from the OpInfo corpus served warm with tripwires",
    "tests/test_key_fuzz.py": "every live Inductor/functorch config entry, numerics flag and option flipped: key must change",
    "tests/test_hostile_store.py": "crafted entries: pickle bombs, forbidden callables, size lies, deep nesting, bad digests, malformed manifests",
    "tests/test_faults_under_load.py": "8 concurrent compiling processes; 20 writers SIGKILLed inside a save; disk full (2 limits); Redis killed and restarted",
    "tests/test_store_faults.py": "store: failing rename, ENOSPC, failing fsync, unwritable dirs, 24 SIGKILLed writers, 8 processes on the same keys",
    "tests/test_store_state_machine.py": "store vs dict model (hypothesis), with on-disk corruption and reopen",
    "tests/test_two_machines.py": "two machines over one Redis: warm start with backfill, tampered remote blobs, Redis killed mid-run",
    "tests/test_signing.py": "unsigned and forged entries refused under trust before deserialization",
    "tests/test_bundle.py": "tampered bundles refused whole",
}


def _file_of(case: ET.Element) -> str:
    classname = case.get("classname", "")
    parts = classname.split(".")
    for i in range(len(parts), 0, -1):
        candidate = "/".join(parts[:i]) + ".py"
        if candidate in SUITES:
            return candidate
    return case.get("file", "") or classname


def summarize(junit: Path) -> dict[str, Counter[str]]:
    counts: dict[str, Counter[str]] = {name: Counter() for name in SUITES}
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = _file_of(case)
        if name not in counts:
            continue
        if case.find("failure") is not None or case.find("error") is not None:
            counts[name]["failed"] += 1
        elif case.find("skipped") is not None:
            counts[name]["skipped"] += 1
        else:
            counts[name]["passed"] += 1
    return counts


def render(counts: dict[str, Counter[str]], junit: Path) -> str:
    import torch

    lines = [
        "# Reliability summary",
        "",
        f"- generated: {datetime.date.today()} by `benchmarks/reliability.py` from `{junit.name}`",
        f"- machine: {os.cpu_count()} CPUs, {platform.machine()}, Python {platform.python_version()}, torch {torch.__version__}",
        f"- program fuzzing: ARTCACHE_FUZZ_N={os.environ.get('ARTCACHE_FUZZ_N', '16 (default)')}",
        "",
        "| suite | what it injects or tries | cases passed | skipped | entries lost or served wrong |",
        "|---|---|---:|---:|---:|",
    ]
    total = Counter[str]()
    for name, what in SUITES.items():
        c = counts[name]
        total.update(c)
        lines.append(f"| `{name}` | {what} | {c['passed']} | {c['skipped']} | {c['failed']} |")
    lines.append(f"| **all** | | **{total['passed']}** | {total['skipped']} | **{total['failed']}** |")
    lines.append("")
    lines.append("A case counts as *lost or served wrong* if any of its assertions failed: a wrong output, a "
                 "torn or partial entry served, a tampered blob served, or a verify problem after a fault.")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--junit", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.write_text(render(summarize(args.junit), args.junit))
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

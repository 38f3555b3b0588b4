"""Hostile local stores: whoever can write into a store directory plants symlinks (to
files and to directories, at every level) pointing outside it, and hard links to files
outside it.  The victim's own process then looks up, saves, evicts, quarantines,
collects garbage, removes entries and logs activity in that store.

Promise checked everywhere: no file outside the store is created, deleted, overwritten,
appended to or re-stamped (a sibling directory is snapshotted with contents, modes and
mtimes before and after), and the user's job (``Cache.lookup`` / ``Cache.save``) never
raises.  A store directory that others can write, or that another user owns, is refused
with a one-line message unless opened with ``?shared=1``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from artcache import Cache
from artcache.activity import MAX_MISS_RECORDS, ActivityLog
from artcache.catalog import execute, plan_gc, plan_rm
from artcache.config import Settings
from artcache.errors import StoreError
from artcache.store import LocalStore, open_store
from artcache.store import eviction
from artcache.store._frame import trailer
from artcache.store.eviction import JOURNAL_NAME

from .conftest import run_python
from artcache.testing import blob, manifest_key, payload_for

SETTINGS = Settings(store_urls=("memory://",))
KEY = "cd" * 32
OTHER_UID = 54321
OTHER_GID = 54322

Snapshot = dict[str, tuple[str, bytes | str, int, int]]


def snapshot(directory: Path) -> Snapshot:
    """Every entry under ``directory``: kind, contents (or link target), mode, mtime."""
    out: Snapshot = {}
    for dirpath, dirnames, filenames in os.walk(directory):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            if path.is_symlink():
                out[str(path)] = ("link", os.readlink(path), st.st_mode, st.st_mtime_ns)
            elif path.is_dir():
                out[str(path)] = ("dir", "", st.st_mode, 0)  # a dir's mtime changes with its entries
            else:
                out[str(path)] = ("file", path.read_bytes(), st.st_mode, st.st_mtime_ns)
    return out


def backdate(path: Path, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t), follow_symlinks=False)


def framed(payload: bytes) -> bytes:
    """Bytes exactly as artcache frames a stored file: what a victim file may look like."""
    return payload + trailer(payload)


class Victim:
    """A sibling directory outside the store, full of files an attacker wants touched."""

    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path / "victim"
        self.dir.mkdir()
        self.key, self.data = blob(payload_for("victim", 3000))
        # Named like store files, so that anything following a link would accept them.
        self.files = {
            self.key[4:]: framed(self.data),
            f"{self.key[4:]}.123.1.bad": b"quarantined-looking",
            f"{self.key[4:]}.1.1.1.tmp": b"temp-looking",
            "events.jsonl": b'{"event": "precious"}\n',
            ".evict.lock": b"lock-looking but precious",
            # A journal that names the victim's blob: appending to it, or evicting what
            # it names through a link, would act outside the store.
            JOURNAL_NAME: eviction.header_line(0, 0, 0) + eviction.put_line(self.key, len(framed(self.data)), 0),
            "precious.txt": b"do not touch",
        }
        for i in range(MAX_MISS_RECORDS + 20):
            self.files[f"{i:064x}.json"] = b"{}"
        for name, data in self.files.items():
            (self.dir / name).write_bytes(data)
            backdate(self.dir / name, 7 * 24 * 3600)  # old: first in line for any eviction
        self.before = snapshot(self.dir)

    def path(self, name: str = "precious.txt") -> Path:
        return self.dir / name

    def assert_untouched(self) -> None:
        after = snapshot(self.dir)
        assert after.keys() == self.before.keys(), (
            f"created {sorted(after.keys() - self.before.keys())[:5]}, "
            f"deleted {sorted(self.before.keys() - after.keys())[:5]}"
        )
        changed = [p for p in after if after[p] != self.before[p]]
        assert not changed, f"modified outside the store: {changed[:5]}"


def shard(store_root: Path, key: str) -> Path:
    space, name = key.split("/")
    return store_root / space / name[:2]


def replace_with_link(path: Path, target: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        for child in path.iterdir():
            child.unlink()
        path.rmdir()
    elif path.exists() or path.is_symlink():
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(target)


def open_or_refuse(root: Path) -> LocalStore | None:
    """The store, or ``None`` if it refuses to open (a ``StoreError`` with its reason:
    the backend then compiles without the cache, see the last test of this module)."""
    try:
        return LocalStore(root, max_size=200_000)
    except StoreError as exc:
        assert "\n" not in str(exc) and str(root) in str(exc)
        return None


def cache_round_trip(store: LocalStore) -> None:
    """A lookup and a save through the Cache facade, as a compile would do them.  The
    facade is not strict: whatever the store holds, none of this may raise."""
    cache = Cache(store, settings=SETTINGS, strict=False)
    cache.lookup(KEY)
    cache.save(KEY, [], factors={}, environment={})
    cache.lookup(KEY)
    cache.record_miss_details(KEY, {"factors": {}, "values": {}})


def exercise(store: LocalStore, victim: Victim, seeded: list[str]) -> None:
    """Everything a store does to its files: reads (and the quarantine of what fails
    them), puts, capped puts that evict, a full eviction, listing, gc and rm."""
    cache_round_trip(store)
    for _ in range(2):
        try:
            assert store.get(victim.key) in (None, victim.data)
            store.put(victim.key, victim.data)
        except StoreError:
            pass  # refusing to act through a planted link is fine; acting through it is not
    for i in range(12):
        try:
            store.put(*blob(payload_for(f"fill{i}", 20_000)))
        except StoreError:
            pass
    for action in (
        lambda: store.evict(0, low_water=0.0),
        lambda: execute(store, plan_gc(store, max_size=0, now=time.time() + 10 * 24 * 3600)),
        lambda: execute(store, plan_rm(store, [k[3:] for k in seeded if k.startswith("ac/")])),
        lambda: list(store.iterate()),
        store.disk_usage,
    ):
        try:
            action()
        except StoreError:
            pass


# -- planted symlinks -----------------------------------------------------------------
def _plant_shard_link(root: Path, victim: Victim) -> None:
    # The victim's blob key lands in a shard that is a link to the victim directory.
    replace_with_link(shard(root, victim.key), victim.dir)


def _plant_key_link(root: Path, victim: Victim) -> None:
    # The key's own file is a link to a (valid-looking) file outside.
    replace_with_link(shard(root, victim.key) / victim.key[4:], victim.path(victim.key[4:]))


def _plant_tmp_link(root: Path, victim: Victim) -> None:
    replace_with_link(root / "tmp", victim.dir)


def _plant_quarantine_link(root: Path, victim: Victim) -> None:
    replace_with_link(root / "quarantine", victim.dir)


def _plant_lock_link(root: Path, victim: Victim) -> None:
    replace_with_link(root / ".evict.lock", victim.path(".evict.lock"))


def _plant_journal_link(root: Path, victim: Victim) -> None:
    replace_with_link(root / JOURNAL_NAME, victim.path(JOURNAL_NAME))


def _plant_journal_hardlink(root: Path, victim: Victim) -> None:
    if (root / JOURNAL_NAME).exists():
        (root / JOURNAL_NAME).unlink()
    os.link(victim.path(JOURNAL_NAME), root / JOURNAL_NAME)


def _plant_files_in_tmp_and_quarantine(root: Path, victim: Victim) -> None:
    for sub, name in (("tmp", f"{victim.key[4:]}.1.1.1.tmp"), ("quarantine", f"{victim.key[4:]}.123.1.bad")):
        link = root / sub / name
        replace_with_link(link, victim.path(name))
        backdate(link, 7 * 24 * 3600)


def _plant_activity_link(root: Path, victim: Victim) -> None:
    replace_with_link(root / "activity", victim.dir)


def _plant_misses_link(root: Path, victim: Victim) -> None:
    replace_with_link(root / "activity" / "misses", victim.dir)


def _plant_events_link(root: Path, victim: Victim) -> None:
    replace_with_link(root / "activity" / "events.jsonl", victim.path("events.jsonl"))


def _plant_events_hardlink(root: Path, victim: Victim) -> None:
    (root / "activity").mkdir(exist_ok=True)
    os.link(victim.path("events.jsonl"), root / "activity" / "events.jsonl")


def _plant_miss_temp_links(root: Path, victim: Victim) -> None:
    # The miss-record temp names a process would use, each a link to a victim file.
    misses = root / "activity" / "misses"
    misses.mkdir(parents=True, exist_ok=True)
    for name in (f".{KEY}.json.{os.getpid()}.tmp", f"{KEY}.json"):
        replace_with_link(misses / name, victim.path())


PLANTS: dict[str, Callable[[Path, Victim], None]] = {
    "shard-dir-link": _plant_shard_link,
    "key-file-link": _plant_key_link,
    "tmp-dir-link": _plant_tmp_link,
    "quarantine-dir-link": _plant_quarantine_link,
    "evict-lock-link": _plant_lock_link,
    "evict-journal-link": _plant_journal_link,
    "evict-journal-hardlink": _plant_journal_hardlink,
    "links-inside-tmp-and-quarantine": _plant_files_in_tmp_and_quarantine,
    "activity-dir-link": _plant_activity_link,
    "misses-dir-link": _plant_misses_link,
    "events-file-link": _plant_events_link,
    "events-file-hardlink": _plant_events_hardlink,
    "miss-record-temp-links": _plant_miss_temp_links,
}


def _seed(root: Path) -> list[str]:
    """A store with some entries, old enough that eviction and gc want them gone."""
    store = LocalStore(root)
    keys = []
    for i in range(6):
        key, data = blob(payload_for(f"seed{i}", 20_000))
        store.put(key, data)
        keys.append(key)
    store.put(manifest_key("seed"), b"not a manifest")  # gc removes a corrupt entry
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            backdate(path, 2 * 24 * 3600)
    return keys


@pytest.mark.parametrize("when", ["before-open", "after-open"])
@pytest.mark.parametrize("plant", sorted(PLANTS))
def test_planted_links_never_make_the_store_act_outside_its_root(tmp_path: Path, plant: str, when: str) -> None:
    root = tmp_path / "store"
    victim = Victim(tmp_path)
    seeded = _seed(root)
    opened = LocalStore(root, max_size=200_000)
    PLANTS[plant](root, victim)

    for store in (opened if when == "after-open" else None, open_or_refuse(root)):
        if store is not None:
            exercise(store, victim, seeded)
    # Activity: events, rotation, miss records and their pruning, and the readers.
    log = ActivityLog(root)
    for i in range(MAX_MISS_RECORDS + 5):
        log.record("miss", key=f"{i:064x}", reason="absent")
        log.record_miss(f"{i:064x}", {"values": {}})
    log.totals()
    log.miss_record()

    victim.assert_untouched()


def test_a_blob_served_through_a_planted_link_is_never_served(tmp_path: Path) -> None:
    # A link at a key's path to a valid-looking file outside: not read, not served.
    root = tmp_path / "store"
    victim = Victim(tmp_path)
    LocalStore(root)
    _plant_key_link(root, victim)
    store = LocalStore(root)
    assert store.get(victim.key) is None
    assert not store.has(victim.key)
    assert victim.key not in {i.key for i in store.iterate()}
    # A legitimate save replaces the link with a real file.
    store.put(victim.key, victim.data)
    assert store.get(victim.key) == victim.data
    assert not (shard(root, victim.key) / victim.key[4:]).is_symlink()
    victim.assert_untouched()


def test_a_fifo_under_a_key_does_not_hang_a_reader(tmp_path: Path) -> None:
    # Opening a FIFO for reading blocks until a writer appears: a lookup would hang.
    root = tmp_path / "store"
    store = LocalStore(root)
    key, data = blob(b"fifo")
    shard(root, key).mkdir(parents=True, exist_ok=True)
    os.mkfifo(shard(root, key) / key[4:])
    code = (
        "from artcache.store import LocalStore\n"
        f"s = LocalStore({str(root)!r})\n"
        f"print(s.get({key!r}), s.has({key!r}))\n"
    )
    proc = run_python(code, timeout=20)
    assert proc.returncode == 0 and proc.stdout.strip() == "None False", proc.stderr[-2000:]
    store.put(key, data)
    assert store.get(key) == data


# -- ownership and modes --------------------------------------------------------------
def _other_owned(path: Path) -> None:
    os.chown(path, OTHER_UID, -1)


def _world_writable(path: Path) -> None:
    path.chmod(0o777)


def _group_writable_foreign_group(path: Path) -> None:
    os.chown(path, -1, OTHER_GID)
    path.chmod(0o775)


UNSAFE = {
    "other-owner": _other_owned,
    "world-writable": _world_writable,
    "group-writable": _group_writable_foreign_group,
}


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")
@pytest.mark.parametrize("where", ["root", "cas", "tmp", "quarantine", "shard"])
@pytest.mark.parametrize("how", sorted(UNSAFE))
def test_a_store_others_can_write_is_refused_unless_shared(tmp_path: Path, where: str, how: str) -> None:
    root = tmp_path / "store"
    key, data = blob(payload_for("owned", 1000))
    LocalStore(root).put(key, data)
    target = {"root": root, "shard": shard(root, key)}.get(where, root / where)
    UNSAFE[how](target)

    with pytest.raises(StoreError) as refused:
        store = LocalStore(root)
        store.get(key)
        store.put(*blob(b"another"))
    message = str(refused.value)
    assert "\n" not in message and "shared=1" in message and str(target) in message
    # Opting in opens it.
    shared = open_store(f"file://{root}?shared=1")
    assert shared.get(key) == data
    shared.put(*blob(b"shared write"))


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")
def test_read_only_store_of_another_user_is_refused_too(tmp_path: Path) -> None:
    root = tmp_path / "store"
    key, data = blob(b"ro")
    LocalStore(root).put(key, data)
    _other_owned(root)
    with pytest.raises(StoreError, match="shared=1"):
        open_store(f"file://{root}?ro=1").get(key)
    assert open_store(f"file://{root}?ro=1&shared=1").get(key) == data


def test_sticky_world_writable_and_private_modes_are_accepted(tmp_path: Path) -> None:
    root = tmp_path / "store"
    key, data = blob(b"sticky")
    LocalStore(root).put(key, data)
    root.chmod(0o1777)  # like /tmp: others may add files, not remove or rename ours
    assert LocalStore(root).get(key) == data
    root.chmod(0o700)
    assert LocalStore(root).get(key) == data


def test_new_store_directories_are_not_group_writable_under_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0o002)
    try:
        store = LocalStore(tmp_path / "store")
        store.put(*blob(b"umask"))
    finally:
        os.umask(old)
    for path in [tmp_path / "store", *(p for p in (tmp_path / "store").rglob("*") if p.is_dir())]:
        assert path.stat().st_mode & 0o022 == 0, path
    assert LocalStore(tmp_path / "store").get(blob(b"umask")[0]) == b"umask"


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")
def test_refused_store_still_compiles_with_one_warning(tmp_path: Path) -> None:
    root = tmp_path / "store"
    LocalStore(root)
    _other_owned(root)
    code = (
        "import torch\n"
        "f = torch.compile(lambda x: x.cos() + 1, backend='artcache')\n"
        "x = torch.randn(5)\n"
        "assert torch.allclose(f(x), x.cos() + 1)\n"
        "print('ok')\n"
    )
    env = {"ARTCACHE_STORE": f"file://{root}", "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "ind")}
    proc = run_python(code, env=env)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
    assert "cannot open the store" in proc.stderr and "shared=1" in proc.stderr
    assert [p for p in root.rglob("*") if p.is_file()] == []  # nothing written to the refused store

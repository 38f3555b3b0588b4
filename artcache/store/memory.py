"""In-process store: for tests, and as a scratch tier.  Thread-safe, optional LRU cap."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterator

from ..errors import StoreError
from .base import KeyInfo, Store, check_key


class MemoryStore(Store):
    persistent = False  # gone with the process: no activity is kept for it

    def __init__(self, *, max_size: int | None = None, read_only: bool = False, name: str = "") -> None:
        self.url = f"memory://{name}"
        self.max_size = max_size
        self.read_only = read_only
        self._data: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> bytes | None:
        check_key(key)
        with self._lock:
            item = self._data.get(key)
            if item is None:
                return None
            self._data[key] = (item[0], time.time())
            self._data.move_to_end(key)
            return item[0]

    def peek(self, key: str) -> bytes | None:
        # No move_to_end: inspecting the store must not reorder its LRU.
        check_key(key)
        with self._lock:
            item = self._data.get(key)
            return None if item is None else item[0]

    def put(self, key: str, data: bytes) -> None:
        check_key(key)
        self._check_writable()
        data = bytes(data)
        if self.max_size is not None and len(data) > self.max_size:
            raise StoreError(f"{key}: {len(data)} bytes exceed the store cap {self.max_size}")
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self._size -= len(old[0])
            self._data[key] = (data, time.time())
            self._size += len(data)
            if self.max_size is not None:
                while self._size > self.max_size:
                    _key, (evicted, _t) = self._data.popitem(last=False)
                    self._size -= len(evicted)

    def has(self, key: str) -> bool:
        check_key(key)
        with self._lock:
            return key in self._data

    def delete(self, key: str) -> bool:
        check_key(key)
        self._check_writable()
        with self._lock:
            item = self._data.pop(key, None)
            if item is None:
                return False
            self._size -= len(item[0])
            return True

    def iterate(self, prefix: str = "") -> Iterator[KeyInfo]:
        with self._lock:
            snapshot = [(k, len(v), t) for k, (v, t) in self._data.items() if k.startswith(prefix)]
        for key, size, last_used in snapshot:
            yield KeyInfo(key, size, last_used)

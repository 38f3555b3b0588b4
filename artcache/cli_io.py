"""Terminal output for the ``artcache`` command: sizes, tables, escaping, confirmation.

Everything a store holds is hostile, titles and graph text included: :func:`printable`
escapes control and format characters (ANSI escapes, carriage returns, bidirectional
overrides) so that no stored string can move the cursor, rewrite earlier lines or
reorder what a terminal shows.  :func:`table` escapes every cell; multi-line text is
escaped line by line.
"""

from __future__ import annotations

import json
import os
import sys
import time
import unicodedata
from collections.abc import Sequence
from typing import Any, TextIO
from urllib.parse import urlsplit, urlunsplit

# Unicode categories never printed raw: controls, format characters (bidi overrides,
# zero-width joiners), surrogates, private use, unassigned, line and paragraph separators.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def _escape_char(ch: str) -> str:
    if ch in _NAMED:
        return _NAMED[ch]
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def printable(value: object) -> str:
    """``str(value)`` with every unsafe character escaped (``\\x1b``, ``\\u202e``); a
    backslash is doubled so an escape in the output always means an escape."""
    text = str(value)
    if text.isprintable() and "\\" not in text:
        return text  # the common case: plain text, nothing to do
    return "".join(_escape_char(ch) if ch in _NAMED or unicodedata.category(ch) in _UNSAFE_CATEGORIES else ch
                   for ch in text)


def printable_lines(text: object) -> list[str]:
    """Multi-line stored text (graph code) as escaped lines."""
    return [printable(line) for line in str(text).split("\n")]


def human(n: float) -> str:
    """Bytes in binary units: ``512 B``, ``1.5 KiB``, ``20.0 GiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def table(rows: Sequence[Sequence[object]], header: Sequence[str]) -> str:
    cells = [[printable(v) for v in row] for row in rows]
    widths = [max(len(x) for x in col) for col in zip(header, *cells)]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in [list(header), *cells])


def emit(fmt: str, data: Any, text: str) -> None:
    """Print ``data`` as JSON (``--format json``; JSON escapes control characters itself)
    or ``text`` (already escaped by whoever built it)."""
    if fmt == "json":
        print(json.dumps(data, indent=2, sort_keys=True, default=str))
    else:
        print(text)


def shown_url(url: str) -> str:
    """A store URL as printed: without credentials or query (where secrets may sit)."""
    shown = []
    for one in url.split(","):
        parts = urlsplit(one)
        host = parts.hostname or ""
        if parts.port is not None:
            host += f":{parts.port}"
        shown.append(urlunsplit((parts.scheme, host, parts.path, "", "")))
    return ",".join(shown)


def confirm(question: str, *, stdin: TextIO | None = None, stderr: TextIO | None = None) -> bool:
    """Ask ``question [y/N]`` on stderr and read the answer from stdin; anything but
    y/yes (an empty line, end of input) is no."""
    stdin = sys.stdin if stdin is None else stdin
    stderr = sys.stderr if stderr is None else stderr
    sys.stdout.flush()  # the plan first, then the question
    stderr.write(f"{question} [y/N] ")
    stderr.flush()
    try:
        answer = stdin.readline()
    except KeyboardInterrupt:  # Ctrl-C at the question is a no, not a traceback
        stderr.write("\n")
        return False
    return answer.strip().lower() in {"y", "yes"}


def on_terminal(stream: TextIO | None = None) -> bool:
    stream = sys.stdin if stream is None else stream
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed or replaced stdin
        return False


def silence_stdout() -> None:
    """After a ``BrokenPipeError`` (``artcache ls | head``): point stdout at /dev/null so
    the interpreter's final flush has nowhere to fail, as Python's documentation advises."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)

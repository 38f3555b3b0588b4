"""The one error hierarchy of artcache.

Stores and the serializer *raise*; only :mod:`artcache.cache` decides what degrades
to a miss (see ``Cache.degrade``).  Nothing else in the package catches these.
"""

from __future__ import annotations


class ArtcacheError(Exception):
    """Base class of every error artcache raises on purpose."""


class StoreError(ArtcacheError):
    """A store could not complete an operation (I/O error, timeout, full disk, bad URL)."""


class ConfigError(ArtcacheError):
    """A setting is wrong: an environment variable or an option of a store URL.  The
    message names it and says how to fix it, on one line, with no credential in it."""


class StoreConfigError(ConfigError, StoreError):
    """A store URL that cannot be used as written (unknown option, bad value or port)."""


class CorruptEntryError(ArtcacheError):
    """Stored bytes failed a check: digest mismatch, truncation, malformed encoding,
    or a type the loader does not allow."""


class IncompatibleEntryError(ArtcacheError):
    """A well-formed entry written for another format version or environment."""


class UntrustedEntryError(ArtcacheError):
    """Trust is configured and the entry lacks a valid signature from a trusted key."""


class Uncacheable(ArtcacheError):
    """This graph or object cannot be cached; it is compiled normally instead.

    ``reason`` is a short stable string used as a stats bucket.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class NotPrecompilable(Uncacheable):
    """A frame cannot skip Dynamo (``artcache.precompile``): it runs through Dynamo, and
    its compiled graphs are still cached.  ``reason`` names why (a graph break, a guard
    kind, a side effect, ...)."""


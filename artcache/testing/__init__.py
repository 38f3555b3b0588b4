"""Test suites that out-of-tree code can run, as ``zarr.testing`` offers its store tests.

``artcache.testing.StoreConformance`` is the one conformance suite every ``Store`` backend
passes: subclass it in a pytest module and provide a ``make_store`` fixture (see
:mod:`artcache.testing.store_conformance`).  Importing this package needs pytest.
"""

from .store_conformance import StoreConformance, StoreFactory, blob, manifest_key, payload_for

__all__ = ["StoreConformance", "StoreFactory", "blob", "manifest_key", "payload_for"]

"""Precompiled frames of models written as model libraries write theirs
(``tests.corpus.library_style``, after Hugging Face transformers): guards that read a
class's ``__dict__`` and ``__mro__``, ``type(x)``, a function's defaults and closure cells,
a property's getter by its code, an enum member, and transformed code that loads a module
Dynamo installed, a builtin, and a dataclass ``__init__`` made by ``exec``.  Proven in
fresh processes (the warm one with Dynamo's tracer tripwired), bitwise; and the new checks
are live: a property getter with other code fails its check and Dynamo traces.
"""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

import pytest
import torch

from artcache._torch import frame_capture as fc
from artcache.code_digest import code_shape_digest
from artcache.errors import NotPrecompilable

from .conftest import run_phase

PROGRAM = r'''
import json, sys, torch, artcache
from tests import _tripwire
from tests.corpus import library_style
phase, out_path = sys.argv[1], sys.argv[2]
_tripwire.armed_in(phase)
if phase == "changed":
    # Another getter, with other code and another value: torch 2.13 inlines the getter and
    # the entry checks its code; torch 2.11 reads the value past __getattribute__ and the
    # entry checks the value.  Either way the entry's check fails and Dynamo traces.
    library_style.Settings.gain = property(lambda self: self.width / 4)

torch.manual_seed(0)
m, x = library_style.LibraryStyle(), torch.randn(3, 8)
pre = artcache.precompile(m, cache=artcache.Cache(strict=True))
outs = []
for _ in range(2):
    out = pre(x, scale=0.5)
    assert type(out) is library_style.Output, type(out)
    outs += [out.hidden, out.logits]
torch.save(outs, out_path)
print(json.dumps({"replayed": pre.replayed, "reasons": dict(pre.reasons)}))
'''


@pytest.mark.slow
def test_a_library_style_model_replays_without_tracing_bitwise(tmp_path: Path) -> None:
    env = {"ARTCACHE_STORE": f"file://{tmp_path}/store", "ARTCACHE_STRICT": "1"}
    cold, warm, changed = (run_phase(PROGRAM, phase, tmp_path, env) for phase in ("cold", "warm", "changed"))
    assert cold["info"] == {"replayed": 0, "reasons": {"absent": 1}}, cold["info"]
    assert warm["info"] == {"replayed": 2, "reasons": {}}, warm["info"]
    assert all(a.dtype == b.dtype and torch.equal(a, b) for a, b in zip(cold["results"], warm["results"], strict=True))
    # The changed getter's program, not the entry's: the logits doubled, exactly.
    assert changed["info"] == {"replayed": 0, "reasons": {"guards": 1}}, changed["info"]
    assert torch.equal(changed["results"][1], cold["results"][1] * 2)
    assert torch.equal(changed["results"][0], cold["results"][0])


def _sources() -> Any:
    import torch._dynamo.source as s

    return s


def test_library_sources_translate_to_paths() -> None:
    s = _sources()
    self_ = s.LocalSource("self")
    cls = s.TypeSource(self_)
    assert fc.source_path(cls) == [["L", "self"], ["t", ""]]
    assert fc.source_path(s.GetItemSource(s.TypeMROSource(cls), 2)) == [["L", "self"], ["t", ""], ["a", "__mro__"],
                                                                        ["i", 2]]
    assert fc.source_path(s.DictGetItemSource(s.TypeDictSource(cls), "attribute_map")) == [
        ["L", "self"], ["t", ""], ["a", "__dict__"], ["i", "attribute_map"]]
    fn = s.AttrSource(self_, "f")
    assert fc.source_path(s.DefaultsSource(fn, 1)) == [["L", "self"], ["a", "f"], ["a", "__defaults__"], ["i", 1]]
    assert fc.source_path(s.DefaultsSource(fn, "k", is_kw=True)) == [
        ["L", "self"], ["a", "f"], ["a", "__kwdefaults__"], ["i", "k"]]
    cell = s.CellContentsSource(s.GetItemSource(s.ClosureSource(fn), 0), "cell_contents")
    assert fc.source_path(cell) == [["L", "self"], ["a", "f"], ["a", "__closure__"], ["i", 0], ["a", "cell_contents"]]
    # torch 2.11 reads a configuration past its own __getattribute__ (PretrainedConfig's)
    config = s.GenericAttrSource(s.AttrSource(self_, "config"), "__dict__")
    assert fc.source_path(config) == [["L", "self"], ["a", "config"], ["g", "__dict__"]]


def test_a_generic_attribute_step_reads_past_the_class_getattribute() -> None:
    from tests.corpus.library_style import Settings

    settings = Settings()
    assert settings.kind == "scaled"  # through Settings.__getattribute__'s attribute_map
    assert fc.generic_getattr(settings, "kind", None) is None  # object.__getattribute__ has no "kind"
    assert fc.generic_getattr(settings, "implementation", None) == "scaled"


def test_a_global_installed_by_id_is_the_module_of_that_id_or_refused() -> None:
    s = _sources()
    assert fc.source_path(s.GlobalSource(f"_{id(torch)}_c0")) == [["M", "torch"]]
    assert fc.source_path(s.GlobalSource(f"___module_types_{id(types)}_c3")) == [["M", "types"]]
    alive = object()
    with pytest.raises(NotPrecompilable, match="Dynamo-installed global"):
        fc.source_path(s.GlobalSource(f"_{id(alive)}_c0"))


def _one(x: Any) -> Any:
    return x + 1


def _two(x: Any) -> Any:
    return x + 2


def test_a_code_check_matches_the_same_code_only() -> None:
    same = types.FunctionType(_one.__code__, {})  # another function object, the same code
    check = fc.code_check(code_shape_digest(_one.__code__))
    assert check(same.__code__) and check(_one.__code__)
    assert not check(_two.__code__) and not check(_one) and not check(None)


SHARED_CONFIG = r'''
import copy, json, sys, torch, artcache
phase, out_path = sys.argv[1], sys.argv[2]

class Config:
    def __init__(self):
        self.scale = 2.0

class Block(torch.nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config, self.lin = config, torch.nn.Linear(4, 4)

    def forward(self, x):
        return self.lin(x) * self.config.scale

class Model(torch.nn.Module):  # one configuration object shared, as a Hugging Face model shares it
    def __init__(self):
        super().__init__()
        self.config = Config()
        self.block = Block(self.config)

    def forward(self, x):
        return self.block(x) + self.config.scale

torch.manual_seed(0)
m, x = Model(), torch.randn(2, 4)
pre = artcache.precompile(m, cache=artcache.Cache(strict=True))
outs = [pre(x), pre(x)]
info = {"replayed": pre.replayed, "tree": bool(pre._replays and pre._replays[0].tree is not None)}
m.block.config = copy.copy(m.config)  # equal values, another object: Dynamo's guard that both are one fails
outs.append(pre(x))
info["after_split"] = pre.replayed
torch.save(outs, out_path)
print(json.dumps(info))
'''


@pytest.mark.slow
def test_a_shared_object_check_runs_in_torchs_guard_tree(tmp_path: Path) -> None:
    """Two paths from the call's locals to one object (Dynamo's DUPLICATE_INPUT guard) are
    checked by torch's guard tree (an epilogue comparing identity), so a served call does
    not fall back to the Python checks; and once the paths lead to two objects, the call is
    not replayed."""
    env = {"ARTCACHE_STORE": f"file://{tmp_path}/store", "ARTCACHE_STRICT": "1"}
    cold, warm = (run_phase(SHARED_CONFIG, phase, tmp_path, env) for phase in ("cold", "warm"))
    assert cold["info"]["replayed"] == 0
    assert warm["info"] == {"replayed": 2, "tree": True, "after_split": 2}, warm["info"]
    assert all(torch.equal(a, b) for a, b in zip(cold["results"], warm["results"], strict=True))


class _WithProperty:
    @property
    def gain(self) -> float:
        return 2.0


def test_a_property_getter_is_named_through_fget_and_pinned_by_its_digest() -> None:
    """A getter Dynamo inlined that no code check covers is recorded by the name that finds
    it again (``Class.prop.fget``) and its code digest: another getter under that name
    changes the digest the entry is checked against."""
    from artcache import code_records

    getter = _WithProperty.__dict__["gain"].fget
    module, qualname, digest = code_records._traced_name(getter.__code__)
    assert (module, qualname) == (__name__, "_WithProperty.gain.fget")
    assert code_records.traced_now(module, qualname, digest) == digest
    original = _WithProperty.gain
    try:
        _WithProperty.gain = property(lambda self: 3.0)  # type: ignore[method-assign,assignment]
        assert code_records.traced_now(module, qualname, digest) != digest
    finally:
        _WithProperty.gain = original  # type: ignore[method-assign]

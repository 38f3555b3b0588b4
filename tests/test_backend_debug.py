"""Torch's backend debugging wrapper made without its import (``artcache._torch.backend_debug``):
the stand-in carries what torch's wrapper sets, is made only inside ``deferred()`` on the
thread that entered it, and a compile through it runs torch's own wrapper."""

from __future__ import annotations

import threading

import pytest
import torch
from torch._dynamo import eval_frame
from torch._dynamo.repro.after_dynamo import WrapBackendDebug

from artcache._torch import backend_debug

from .conftest import run_phase, run_python


def plain_backend(gm, example_inputs):
    return gm.forward


class NamedBackend:
    """A backend object with what torch's wrapper copies or reads."""

    compiler_name = "named"

    def __init__(self) -> None:
        self.backend_ctx_ctor = lambda: None
        self.setting = 3

    def get_compiler_config(self) -> dict[str, int]:
        return {"setting": self.setting}

    def __call__(self, gm, example_inputs):
        return gm.forward


@pytest.mark.parametrize("backend", [plain_backend, NamedBackend()], ids=["function", "object"])
def test_the_stand_in_carries_what_torchs_wrapper_sets(backend) -> None:
    # Made directly: this process has imported torch's wrapper, so get_compiler_fn here
    # returns torch's own (the fresh process below sees the stand-in made).
    made = backend_debug._DeferredWrapBackendDebug(backend, getattr(backend, "compiler_name", None))
    real = WrapBackendDebug(backend, getattr(backend, "compiler_name", None))
    assert vars(made).keys() == vars(real).keys()
    for name, value in vars(real).items():
        assert getattr(made, name) == value, name


def test_outside_deferred_or_on_another_thread_torchs_wrapper_is_made() -> None:
    assert backend_debug.install()
    assert type(eval_frame.get_compiler_fn(plain_backend)) is WrapBackendDebug
    other: list[object] = []
    with backend_debug.deferred():
        thread = threading.Thread(target=lambda: other.append(eval_frame.get_compiler_fn(plain_backend)))
        thread.start()
        thread.join()
        by_name = eval_frame.get_compiler_fn("eager")  # a name: torch looks it up and wraps it
    assert type(other[0]) is WrapBackendDebug
    assert type(by_name) is WrapBackendDebug


PROGRAM = r'''
import sys, torch, torch._dynamo
from artcache._torch import backend_debug
assert backend_debug.install()
seen = []
def backend(gm, example_inputs):
    seen.append(len(example_inputs))
    return gm.forward
with backend_debug.deferred():
    made = torch._dynamo.eval_frame.get_compiler_fn(backend)
    compiled = torch._dynamo.optimize(backend=backend)(lambda x: torch.sin(x) * 2)
assert type(made) is backend_debug._DeferredWrapBackendDebug, made
before = "torch._dynamo.repro.after_dynamo" in sys.modules
x = torch.randn(4)
assert torch.equal(compiled(x), torch.sin(x) * 2)
print(before, "torch._dynamo.repro.after_dynamo" in sys.modules, seen)
'''


def test_a_compile_through_the_stand_in_imports_and_runs_torchs_wrapper() -> None:
    proc = run_python(PROGRAM, env={}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["False", "True", "[1]"], proc.stdout


HIT = r'''
import json, sys, torch, artcache
phase, out = sys.argv[1], sys.argv[2]
if phase == "warm":
    from tests import _tripwire
    _tripwire.install()
    _tripwire.arm_tracer(lambda: True)

def f(x, y):
    return torch.relu(x @ y).sum(-1)

torch.manual_seed(0)
x, y = torch.randn(6, 8), torch.randn(8, 4)
if phase == "changed":
    x, y = x.double(), y.double()
compiled = torch.compile(f, backend=artcache.Cache().backend(options={"precompile": True}))
result = compiled(x, y)
torch.save({"result": result, "want": torch.compile(f, backend="inductor")(x, y) if phase == "changed" else result}, out)
from artcache import frame_hook
print(json.dumps({"imported": "torch._dynamo.repro.after_dynamo" in sys.modules,
                  "replayed": sum(h.replayed for h in frame_hook.attached())}))
'''


@pytest.mark.slow
def test_a_precompiled_hit_through_torch_compile_never_imports_the_wrapper(tmp_path) -> None:
    """Fresh processes: the warm one (tracer and compilers tripwired) is served from the
    store without importing torch's debugging wrapper (AOTAutograd, networkx), and gives
    the cold result bitwise; one whose guards fail (other dtypes) compiles through it and
    equals Inductor's own compile."""
    env = {"ARTCACHE_STORE": f"file://{tmp_path}/store", "ARTCACHE_STRICT": "1"}
    cold = run_phase(HIT, "cold", tmp_path, env)
    warm = run_phase(HIT, "warm", tmp_path, env)
    changed = run_phase(HIT, "changed", tmp_path, env)
    assert warm["info"] == {"imported": False, "replayed": 1}
    assert torch.equal(warm["results"]["result"], cold["results"]["result"])
    assert changed["info"] == {"imported": True, "replayed": 0}
    assert torch.equal(changed["results"]["result"], changed["results"]["want"])

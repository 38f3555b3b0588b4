"""Frames with graph breaks in the precompile tier (``artcache.frame_resume``), proven in
fresh processes: a guard of a resume frame that fails after the first graph ran leaves the
rest of the frame to Dynamo and the result is a fresh compile's, bitwise; a stored chain
entry with malformed code or bindings is refused as a miss and the call is still right.
(The corpus programs ``graph_break`` and ``graph_break_train`` replaying without Dynamo,
bitwise equal to cold, are in ``tests/test_precompile.py``.)
"""

from __future__ import annotations

import json
import shutil
import types
from pathlib import Path
from typing import Any

import pytest

from .conftest import run_cli, run_phase, run_python

COLD = """
import json, torch, artcache
from tests.corpus.programs import PROGRAMS
fn, (x,) = PROGRAMS["graph_break_train"].build()
pre = artcache.precompile(fn, cache=artcache.Cache(strict=True))
pre(x).sum().backward()
print(json.dumps({"reasons": dict(pre.reasons)}))
"""

# The module of the recorded call, with its second Linear replaced by one of another shape:
# the first frame's guards (which read only ``a``) hold, the resume frame's (``b``) do not.
RESUME_GUARD = """
import json, torch, artcache
from tests.corpus.programs import PROGRAMS
traced = []
from torch._dynamo import symbolic_convert
run = symbolic_convert.InstructionTranslator.run
def noting(self):
    traced.append(self.f_code.co_name)
    return run(self)
symbolic_convert.InstructionTranslator.run = noting

def build():
    fn, (x,) = PROGRAMS["graph_break_train"].build()
    torch.manual_seed(7)
    fn.b = torch.nn.Linear(16, 8)
    return fn, x

fn, x = build()
pre = artcache.precompile(fn, cache=artcache.Cache(strict=True))
results = []
for _ in range(2):
    out = pre(x)
    out.square().sum().backward()
    results.append([out.detach(), *(p.grad.clone() for p in fn.parameters())])
    fn.zero_grad()
served = list(traced)
ref, x2 = build()
compiled = torch.compile(ref, backend="inductor")
want = []
for _ in range(2):
    out = compiled(x2)
    out.square().sum().backward()
    want.append([out.detach(), *(p.grad.clone() for p in ref.parameters())])
    ref.zero_grad()
same = all(a.dtype == b.dtype and torch.equal(a, b) for r, w in zip(results, want) for a, b in zip(r, w))
print(json.dumps({"same": same, "n": len(results[0]), "replayed": pre.replayed, "reasons": dict(pre.reasons),
                  "traced": served}))
"""

# Rewrite the stored chain entry (an unsigned copy of the store): MUTATION changes its document.
TAMPER = """
import json, torch, artcache
from artcache import pickler
from artcache.entry import BlobRole, NewBlob, SummaryKey
cache = artcache.Cache()
key = {key!r}
loaded = cache.lookup(key)
doc = pickler.loads(loaded.blob(BlobRole.OBJECT), {{}}, verify=True)
{mutation}
cache.save(key, [NewBlob(BlobRole.OBJECT, pickler.dumps(doc).data)], factors=loaded.manifest.factors,
           environment=loaded.manifest.environment, summary={{SummaryKey.TITLE: "tampered"}})
"""

USE = """
import json, torch, artcache
from tests.corpus.programs import PROGRAMS
fn, (x,) = PROGRAMS["graph_break_train"].build()
ref, (x2,) = PROGRAMS["graph_break_train"].build()
cache = artcache.Cache()
pre = artcache.precompile(fn, cache=cache)
out = pre(x)
want = ref(x2)
print(json.dumps({"close": bool(torch.allclose(out, want, atol=1e-6)), "replayed": pre.replayed,
                  "reasons": dict(pre.reasons), "misses": dict(cache.stats().misses)}))
"""

MUTATIONS = {
    # an opcode byte no Python has, in the frame's transformed code
    "bad-opcode": "doc['steps'][0]['out']['code'] = 'ff00' + doc['steps'][0]['out']['code'][4:]",
    # a binding that would overwrite a user global
    "bad-binding": "doc['steps'][0]['bindings'][0][0] = 'torch'",
    # a resume step that resumes into itself (a cycle)
    "resume-cycle": "[b.__setitem__(2, 0) for b in doc['steps'][0]['bindings'] if b[1] == 'resume']",
    # a constant of a type a code document never holds
    "bad-constant": "doc['steps'][1]['out']['consts'].append(['eval', 'print(1)'])",
    # code whose signature is not the frame's
    "signature": "doc['steps'][0]['out']['argcount'] = 5",
    # a resume function without free variables bound as if it had some
    "closure-kind": "[b.__setitem__(1, 'closure') for b in doc['steps'][0]['bindings'] if b[1] == 'resume']",
    # a one-graph frame entry with no graph (only a chain step may have none)
    "no-graph-frame": "doc = dict(doc['steps'][0]['frame'], graph_key='', inputs=[], storage=[])",
}


def _last_json(stdout: str) -> dict[str, Any]:
    return json.loads(stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("precompile-breaks")
    url = f"file://{tmp}/store"
    proc = run_python(COLD, env={"ARTCACHE_STORE": url, "TORCHINDUCTOR_CACHE_DIR": str(tmp / "ind-cold")})
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert _last_json(proc.stdout)["reasons"] == {"absent": 1}, proc.stdout
    listed = run_cli("ls", "--format", "json", env={"ARTCACHE_STORE": url})
    assert listed.returncode == 0, listed.stderr
    frames = [e["key"] for e in json.loads(listed.stdout)["entries"] if e["title"].startswith("precompiled frame")]
    assert len(frames) == 1, listed.stdout
    return {"tmp": tmp, "url": url, "key": frames[0]}


@pytest.mark.slow
def test_a_failed_resume_guard_leaves_the_rest_to_dynamo_bitwise(store: dict[str, Any]) -> None:
    """The first graph is replayed, the resume frame's guard fails (``b`` has another
    shape): Dynamo traces that resume frame only, and outputs and gradients equal a fresh
    Inductor compile of the same module bitwise, on the first call and the next."""
    proc = run_python(RESUME_GUARD, env={"ARTCACHE_STORE": store["url"],
                                         "TORCHINDUCTOR_CACHE_DIR": str(store["tmp"] / "ind-resume")})
    assert proc.returncode == 0, proc.stderr[-4000:]
    got = _last_json(proc.stdout)
    assert got["same"] and got["n"] == 5, got
    assert got["replayed"] == 2 and got["reasons"] == {"resume-guards": 2}, got
    assert got["traced"] and all(name.startswith("torch_dynamo_resume_in_forward") for name in got["traced"]), got


@pytest.mark.slow
def test_inspect_shows_the_resume_steps(store: dict[str, Any]) -> None:
    shown = run_cli("inspect", store["key"], env={"ARTCACHE_STORE": store["url"]})
    assert shown.returncode == 0, shown.stderr
    assert "resume_steps" in shown.stdout and "torch_dynamo_resume_in_forward" in shown.stdout, shown.stdout[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_a_malformed_chain_entry_is_a_miss(store: dict[str, Any], mutation: str, tmp_path: Path) -> None:
    """A stored chain entry rewritten (in a store without signatures) is refused before any
    code is built: the call goes through Dynamo and is right."""
    shutil.copytree(store["tmp"] / "store", tmp_path / "store")
    env = {"ARTCACHE_STORE": f"file://{tmp_path}/store", "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "ind")}
    proc = run_python(TAMPER.format(key=store["key"], mutation=MUTATIONS[mutation]), env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    proc = run_python(USE, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    got = _last_json(proc.stdout)
    assert got["close"] and got["replayed"] == 0, got
    assert got["reasons"].get("unloadable") == 1 and got["misses"].get("unloadable") == 1, got


# -- the documents, without a compile -------------------------------------------------------
def _sample(x: Any, y: Any = 2, *rest: Any, scale: float = 1.5, **extra: Any) -> Any:
    return (x * scale + y, b"\x00raw", (1, 2.5, None, True, "s", frozenset({3})), 1j, ...)


def _chain_doc() -> dict[str, Any]:
    from artcache._torch import code_codec
    from artcache.frame_entry import FrameEntry

    frame = FrameEntry([["eq", [["L", "k"]], ["int", 3]]], "{}", [[["L", "x"]]], ["c", None], "a" * 64, True, [],
                       False, [0]).plain()
    code = code_codec.encode(_sample.__code__)
    return {"chain": 1, "steps": [
        {"code": None, "out": code, "frame": frame,
         "bindings": [["__compiled_fn_1_x", "graph", 0], ["__resume_at_8_2", "resume", 1],
                      ["__import_torch", "module", "torch"], ["__builtins_dict___1", "builtins", 0]]},
        {"code": code, "out": code, "frame": frame, "bindings": [["__compiled_fn_3_y", "graph", 0]]},
    ]}


def test_code_documents_round_trip_through_the_safe_pickler() -> None:
    from artcache import pickler
    from artcache._torch import code_codec
    from artcache.frame_resume import ChainEntry

    doc = pickler.loads(pickler.dumps(_chain_doc()).data, {})
    entry = ChainEntry.from_plain(doc)
    rebuilt = code_codec.decode(entry.steps[1].code)  # type: ignore[arg-type]
    fn = types.FunctionType(rebuilt, globals())
    assert fn(2.0, 1, scale=2.0) == _sample(2.0, 1, scale=2.0)
    assert rebuilt.co_code == _sample.__code__.co_code and rebuilt.co_varnames == _sample.__code__.co_varnames


def _set(path: list[Any], value: Any) -> Any:
    def change(doc: dict[str, Any]) -> None:
        target: Any = doc
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = value(doc) if callable(value) else value
    return change


def test_a_guarded_user_global_binding_is_accepted() -> None:
    """The counterpart of the ``global`` cases below: a user global the step's guards check
    by identity is a binding a chain entry may hold."""
    from artcache.frame_resume import ChainEntry

    doc = _chain_doc()
    doc["steps"][0]["frame"]["guards"].append(["is", [["G", "Output"]], ["tests.corpus.programs", "HeadOutput"]])
    doc["steps"][0]["bindings"].append(["Output", "global", 0])
    assert ChainEntry.from_plain(doc).steps[0].bindings[-1] == ["Output", "global", 0]


@pytest.mark.parametrize("change", [
    _set(["chain"], 2),
    _set(["steps"], []),
    _set(["steps", 0, "code"], lambda doc: doc["steps"][1]["code"]),  # the first step is the frame's own code
    _set(["steps", 1, "code"], None),
    _set(["steps", 0, "out", "code"], "ff00"),  # no such opcode
    _set(["steps", 0, "out", "code"], "0"),  # odd hex
    _set(["steps", 0, "out", "code"], ""),
    _set(["steps", 0, "out", "python"], "2.7"),
    _set(["steps", 0, "out", "names"], [1]),
    _set(["steps", 0, "out", "argcount"], -1),
    _set(["steps", 0, "out", "consts"], [["eval", "1"]]),
    _set(["steps", 0, "out", "consts"], [["int", "1"]]),
    _set(["steps", 0, "out", "consts"], [["tuple", [["code", {"python": "3.11"}]]]]),
    _set(["steps", 0, "out", "extra"], 1),
    _set(["steps", 0, "bindings", 0], ["torch", "graph", 0]),  # not a name Dynamo installs
    _set(["steps", 0, "bindings", 1], ["__resume_at_8_2", "resume", 0]),  # a cycle
    _set(["steps", 0, "bindings", 1], ["__resume_at_8_2", "resume", 5]),
    _set(["steps", 0, "bindings", 1], ["__resume_at_8_2", "eval", "x"]),
    _set(["steps", 0, "bindings", 2], ["__import_torch", "module", "os; import sys"]),
    _set(["steps", 0, "bindings", 2], ["__compiled_fn_1_x", "module", "torch"]),  # one name twice
    _set(["steps", 0, "bindings", 3], ["__builtins_dict___1", "builtins", "os"]),
    _set(["steps", 1, "bindings"], []),  # a step calls its graph once
    _set(["steps", 1, "frame", "wrapped"], True),
    _set(["steps", 0, "bindings", 3], ["Output", "global", 0]),  # a user global no guard checks
    _set(["steps", 0, "bindings", 3], ["__builtins__", "global", 0]),  # not a user global's name
    _set(["steps", 0, "bindings", 3], ["os.path", "global", 0]),
    _set(["steps", 0, "bindings", 3], ["k", "global", 1]),
])
def test_malformed_chain_documents_are_refused(change: Any) -> None:
    _assert_refused(_chain_doc(), change)


def _assert_refused(doc: dict[str, Any], change: Any) -> None:
    """``doc`` reads; changed by ``change``, it is refused as corrupt."""
    from artcache.errors import CorruptEntryError
    from artcache.frame_resume import ChainEntry

    ChainEntry.from_plain(doc)
    change(doc)
    with pytest.raises(CorruptEntryError):
        ChainEntry.from_plain(doc)


# -- torch.compile(..., options={"precompile": True}) --------------------------------------
COMPILED = r'''
import json, sys, torch
phase, out_path = sys.argv[1], sys.argv[2]
traced = []
if phase == "warm":
    from tests import _tripwire
    _tripwire.install()
    _tripwire.arm_tracer(lambda: True)
else:
    from torch._dynamo import symbolic_convert
    run = symbolic_convert.InstructionTranslator.run
    def noting(self):
        traced.append(self.f_code.co_name)
        return run(self)
    symbolic_convert.InstructionTranslator.run = noting
from tests.corpus.programs import PROGRAMS

def steps(name, compile_fn):
    fn, (x,) = PROGRAMS[name].build()
    if phase == "changed":
        torch.manual_seed(7)
        fn.b = torch.nn.Linear(16, 8).train(fn.training)  # the same module tree: the same frame key
    c = compile_fn(fn)
    outs = []
    for _ in range(3):
        with torch.set_grad_enabled(PROGRAMS[name].train):
            out = c(x)
        outs.append(out.detach())
        if PROGRAMS[name].train:
            out.square().sum().backward()
            outs += [p.grad.clone() for p in fn.parameters()]
            fn.zero_grad()
    return outs

results = {}
for name in ("graph_break", "graph_break_train"):
    results[name] = steps(name, lambda fn: torch.compile(fn, backend="artcache", options={"precompile": True}))
served = list(traced)
if phase == "changed":
    for name in ("graph_break", "graph_break_train"):
        results[name + "-fresh"] = steps(name, lambda fn: torch.compile(fn, backend="inductor"))
torch.save(results, out_path)
from artcache import frame_hook
hooks = [[h.replayed, h.trees, dict(h.reasons)] for h in frame_hook.attached()]
print(json.dumps({"hooks": hooks, "traced": served}))
'''


def _compiled(phase: str, tmp: Path, store: str) -> tuple[dict[str, Any], dict[str, Any]]:
    import torch

    out = tmp / f"{phase}.pt"
    env = {"ARTCACHE_STORE": store, "ARTCACHE_STRICT": "1", "TORCHINDUCTOR_CACHE_DIR": str(tmp / f"ind-{phase}")}
    proc = run_python(f"import sys; sys.argv = ['x', {phase!r}, {str(out)!r}]\n" + COMPILED, env=env, timeout=900)
    assert proc.returncode == 0, f"{phase} failed:\n{proc.stderr[-6000:]}"
    return torch.load(out, weights_only=True), _last_json(proc.stdout)


@pytest.fixture(scope="module")
def compiled_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("precompile-breaks-compile")
    store = f"file://{tmp}/store"
    return {phase: _compiled(phase, tmp, store) for phase in ("cold", "warm", "changed")}


def _bitwise(a: list[Any], b: list[Any]) -> bool:
    import torch

    return len(a) == len(b) and all(x.dtype == y.dtype and torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.slow
def test_torch_compile_replays_graph_breaks_without_tracing_bitwise(compiled_runs: dict[str, Any]) -> None:
    """Through ``torch.compile``: the warm process (tracer and compiler tripwires armed)
    served every call, the later ones after torch's guard tree held, bitwise equal to cold
    (outputs and gradients of three training steps)."""
    (cold, cold_info), (warm, warm_info) = compiled_runs["cold"], compiled_runs["warm"]
    assert [h[2] for h in cold_info["hooks"]] == [{"absent": 1}, {"absent": 1}], cold_info
    assert warm_info["hooks"] == [[3, 1, {}], [3, 1, {}]], warm_info
    for name in ("graph_break", "graph_break_train"):
        assert _bitwise(cold[name], warm[name]), name


@pytest.mark.slow
def test_torch_compile_failed_resume_guard_is_a_fresh_compile_bitwise(compiled_runs: dict[str, Any]) -> None:
    """Through ``torch.compile``, ``b`` of another shape: the first graph replays, Dynamo
    traces the resume frame only, and the results equal a fresh Inductor compile bitwise."""
    results, info = compiled_runs["changed"]
    assert [h[0] for h in info["hooks"]] == [3, 3] and all(h[2].get("resume-guards") for h in info["hooks"]), info
    assert info["traced"] and all(n.startswith("torch_dynamo_resume_in_forward") for n in info["traced"]), info
    for name in ("graph_break", "graph_break_train"):
        assert _bitwise(results[name], results[name + "-fresh"]), name


# -- a closure: the resume function has free variables ------------------------------------
CLOSURE = r'''
import json, sys, torch, artcache
phase, out_path = sys.argv[1], sys.argv[2]
if phase == "warm":  # "warm-traced": the same call, where the frame is not precompilable
    from tests import _tripwire
    _tripwire.install()
    _tripwire.arm_tracer(lambda: True)
OFFSET = torch.linspace(0, 1, 6)
# A tensor in **kwargs, read after the break only (a dict's contents are no part of the frame key).
T = torch.full((6,), 0.5, dtype=torch.float64 if phase == "changed" else torch.float32)

def make(scale, shift):
    def fn(x, w, *rest, bias=1.0, **kw):
        y = torch.tanh(x @ w) * scale
        print("between the graphs", len(rest), file=sys.stderr)  # a graph break: Python between graphs
        return ((y + bias + OFFSET) * shift * kw["t"]).sum(0) * len(rest), kw["k"]
    return fn

x, w = torch.randn(5, 8, generator=torch.Generator().manual_seed(0)), torch.randn(8, 6, generator=torch.Generator().manual_seed(1))
results = {}
ways = {"wrapper": lambda fn: artcache.precompile(fn, cache=artcache.Cache(strict=True)),
        "compile": lambda fn: torch.compile(fn, backend="artcache", options={"precompile": True})}
served = {}
for way, compile_fn in ways.items():
    fn = make(torch.tensor(0.25), torch.tensor(2.0))
    c = compile_fn(fn)
    results[way] = [c(x, w, 1, 2, bias=2.0, k=3, t=T)[0] for _ in range(2)]
    if way == "wrapper":
        served[way] = [c.replayed, dict(c.reasons)]
    if phase == "changed":
        results[way + "-fresh"] = [torch.compile(make(torch.tensor(0.25), torch.tensor(2.0)), backend="inductor")(
            x, w, 1, 2, bias=2.0, k=3, t=T)[0]]
from artcache import frame_hook
served["compile"] = [[h.replayed, dict(h.reasons)] for h in frame_hook.attached()][0]
torch.save(results, out_path)
print(json.dumps(served))
'''


def _torch_before(major: int, minor: int) -> bool:
    import torch

    return tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]) < (major, minor)


# torch 2.13 reaches a closure's resume function through a factory global Dynamo installs
# (``chain_capture._factory_code``), which the chain binds as a step.  torch 2.11 does not
# (seen on the H200: the resume function is recorded as a frame of its own, with free
# variables): the frame is not precompilable, both ways name why, and every call goes
# through Dynamo (its graphs hit), giving the same results.
CLOSURE_REFUSED = {"wrapper": "not-precompilable:other-frames", "compile": "not-precompilable:called-closure"}


@pytest.fixture(scope="module")
def closure_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    import torch

    tmp = tmp_path_factory.mktemp("precompile-breaks-closure")
    store = f"file://{tmp}/store"
    runs = {}
    replays = not _torch_before(2, 13)
    for phase in ("cold", "warm" if replays else "warm-traced", "changed"):
        out = tmp / f"{phase}.pt"
        env = {"ARTCACHE_STORE": store, "ARTCACHE_STRICT": "1", "TORCHINDUCTOR_CACHE_DIR": str(tmp / f"ind-{phase}")}
        proc = run_python(f"import sys; sys.argv = ['x', {phase!r}, {str(out)!r}]\n" + CLOSURE, env=env, timeout=900)
        assert proc.returncode == 0, f"{phase} failed:\n{proc.stderr[-6000:]}"
        assert proc.stderr.count("between the graphs 2") == 4 + 2 * (phase == "changed"), proc.stderr[-3000:]
        runs[phase.split("-")[0]] = (torch.load(out, weights_only=True), _last_json(proc.stdout))
    runs["replays"] = replays
    return runs


@pytest.mark.slow
def test_a_closure_with_a_graph_break_replays_without_tracing_bitwise(closure_runs: dict[str, Any]) -> None:
    """A closure (free variables in the frame and in its resume function), varargs,
    keyword-only arguments, ``**kwargs`` and a builtin called between the graphs: the
    warm process (tripwires armed) replays both ways, bitwise equal to cold.  Where this
    torch's resume functions cannot be bound (above), each way names the reason and the
    warm process, through Dynamo, equals the cold one bitwise."""
    (cold, cold_info), (warm, warm_info) = closure_runs["cold"], closure_runs["warm"]
    if closure_runs["replays"]:
        assert cold_info == {"wrapper": [0, {"absent": 1}], "compile": [0, {"absent": 1}]}, cold_info
        assert warm_info == {"wrapper": [2, {}], "compile": [2, {}]}, warm_info
    else:
        refused = {way: [0, {"absent": 1, reason: 1}] for way, reason in CLOSURE_REFUSED.items()}
        assert cold_info == refused and warm_info == refused, (cold_info, warm_info)
    for way in ("wrapper", "compile"):
        assert _bitwise(cold[way], warm[way]), way


@pytest.mark.slow
def test_a_closures_failed_resume_guard_is_a_fresh_compile_bitwise(closure_runs: dict[str, Any]) -> None:
    """A tensor in ``**kwargs`` read only after the break has another dtype: the first graph
    replays, the resume function (with this call's cells) goes through Dynamo, equal to a
    fresh compile (where the frame is not precompilable, above: all of it through Dynamo)."""
    results, info = closure_runs["changed"]
    if closure_runs["replays"]:
        assert info == {"wrapper": [2, {"resume-guards": 2}], "compile": [2, {"resume-guards": 2}]}, info
    else:
        assert info == {way: [0, {"absent": 1, reason: 1}] for way, reason in CLOSURE_REFUSED.items()}, info
    for way in ("wrapper", "compile"):
        assert _bitwise(results[way], results[way + "-fresh"] * 2), way


# -- Python side effects, applied by the transformed code ----------------------------------
SIDE_EFFECTS = r'''
import json, sys, torch, artcache
from tests import _tripwire
phase, out_path = sys.argv[1], sys.argv[2]
armed = _tripwire.armed_in(phase)

class Logged(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)
        self.log = []

    def forward(self, x):
        y = self.a(x).relu()
        self.log.append("before")  # mutations of an object that existed before the call
        BREAK
        self.log.append(y.shape[0])
        return self.b(y)

torch.manual_seed(0)
m, x = Logged(), torch.randn(3, 8)
pre = artcache.precompile(m, cache=artcache.Cache(strict=True))
outs = [pre(x)]
first = [list(m.log), pre.replayed]
armed[0] = False  # the log is longer now: its length guard fails, Dynamo traces again
outs.append(pre(x))
torch.save(outs, out_path)
print(json.dumps({"first": first, "log": m.log, "replayed": pre.replayed, "reasons": dict(pre.reasons)}))
'''


def _cold_and_warm(program: str, tmp_path: Path) -> list[tuple[Any, dict[str, Any]]]:
    """``program`` run cold, then warm, each in a fresh process over one strict store: the
    tensors each saved and the JSON line each printed last."""
    env = {"ARTCACHE_STORE": f"file://{tmp_path}/store", "ARTCACHE_STRICT": "1"}
    runs = [run_phase(program, phase, tmp_path, env) for phase in ("cold", "warm")]
    return [(run["results"], run["info"]) for run in runs]  # type: ignore[misc]


@pytest.mark.slow
@pytest.mark.parametrize("brk", ["torch._dynamo.graph_break()", "pass"], ids=["graph-break", "one-graph"])
def test_a_chain_applies_the_frames_side_effects(tmp_path: Path, brk: str) -> None:
    """Mutations of the module (a list appended to before and after a graph break, or in a
    frame of one graph, stored as a chain of one step) are applied by the replayed code:
    the warm first call (tracer armed) leaves the module as the cold one did; the next call,
    whose guards on the list's length fail, goes through Dynamo and is right too."""
    (cold, cold_info), (warm, warm_info) = _cold_and_warm(SIDE_EFFECTS.replace("BREAK", brk), tmp_path)
    assert cold_info["first"] == [["before", 3], 0] and cold_info["reasons"] == {"absent": 1}, cold_info
    assert warm_info["first"] == [["before", 3], 1], warm_info
    assert warm_info["log"] == cold_info["log"] == ["before", 3] * 2, warm_info
    assert _bitwise(cold, warm)


# A frame of one graph that returns a new object with attributes set
# (``tests.corpus.programs.ObjectHead``): Dynamo's transformed code builds it after the graph.
OUTPUT_OBJECT = r'''
import json, sys, torch, artcache
from tests.corpus.programs import HeadOutput, MODULE
from tests import _tripwire
phase, out_path = sys.argv[1], sys.argv[2]
_tripwire.armed_in(phase)

torch.manual_seed(0)
m, x = MODULE(), torch.randn(3, 8)
pre = artcache.precompile(m, cache=artcache.Cache(strict=True))
outs = []
for _ in range(2):
    out = pre(x)
    assert type(out) is HeadOutput, type(out)
    outs += [out.hidden, out.logits]
torch.save(outs, out_path)
print(json.dumps({"replayed": pre.replayed, "reasons": dict(pre.reasons)}))
'''


@pytest.mark.slow
@pytest.mark.parametrize("module", ["ObjectHead", "DecoratedHead"])
def test_a_one_graph_frame_that_builds_an_object_replays_bitwise(tmp_path: Path, module: str) -> None:
    """A frame of one graph whose return value is a new object with attributes (a Python
    side effect to Dynamo) replays as a chain of one step: the warm process (tracer armed)
    returns the same type with bitwise equal tensors, and Dynamo traced nothing.  Also with
    ``forward`` decorated as Hugging Face models decorate it: the frame is the wrapper, its
    guards name the function it wraps, whose name finds the wrapper (``__wrapped__``)."""
    (cold, cold_info), (warm, warm_info) = _cold_and_warm(OUTPUT_OBJECT.replace("MODULE", module), tmp_path)
    assert cold_info == {"replayed": 0, "reasons": {"absent": 1}}, cold_info
    assert warm_info == {"replayed": 2, "reasons": {}}, warm_info
    assert _bitwise(cold, warm)


CHAIN_LENGTH = """
import json, torch, artcache
from artcache import frame_resume
from tests.corpus.programs import PROGRAMS
frame_resume._MAX_STEPS = 1  # the graph_break program converts two frames
fn, (x,) = PROGRAMS["graph_break"].build()
pre = artcache.precompile(fn, cache=artcache.Cache(strict=True))
out = pre(x)
print(json.dumps({"reasons": dict(pre.reasons)}))
"""


def test_a_chain_longer_than_a_reader_accepts_is_not_recorded(tmp_path: Path) -> None:
    """A chain with more steps than ``ChainEntry.from_plain`` reads back is refused when it
    is recorded (a reason, no frame entry), not saved to be refused at every later load."""
    env = {"ARTCACHE_STORE": f"file://{tmp_path}/store", "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "ind")}
    proc = run_python(CHAIN_LENGTH, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert _last_json(proc.stdout)["reasons"] == {"absent": 1, "not-precompilable:chain-length": 1}, proc.stdout


# -- chains that call frames of their own (schema 2) ---------------------------------------
def _calls_doc() -> dict[str, Any]:
    """A second-version chain: a first step without a graph whose code calls a resume
    function Dynamo left as it is, and one called frame."""
    from artcache._torch import code_codec
    from artcache.frame_entry import FrameEntry

    doc = _chain_doc()
    code = code_codec.encode(_sample.__code__)
    no_graph = FrameEntry([], "{}", [], ["c", None], "", False, [], False, []).plain()
    top = {"code": None, "out": code, "frame": no_graph, "bindings": [["__resume_at_4_1", "skipped", 0]]}
    called = {**doc, "chain": 2, "skipped": [], "called": [], "name": ["tests.test_precompile_breaks", "_sample",
                                                                        "d" * 64, "e" * 64]}
    return {"chain": 2, "steps": [top], "skipped": [code], "called": [called], "name": None}


def test_a_chain_with_called_frames_round_trips_and_reads_back() -> None:
    from artcache import pickler
    from artcache.frame_resume import ChainEntry

    entry = ChainEntry.from_plain(pickler.loads(pickler.dumps(_calls_doc()).data, {}))
    assert entry.calls and entry.steps[0].frame.graph_key == "" and entry.called[0].name[1] == "_sample"
    assert len(entry.called[0].steps) == 2 and not entry.called[0].called
    assert ChainEntry.from_plain(entry.plain()) == entry
    assert not ChainEntry.from_plain(_chain_doc()).calls  # a first-version document still reads


@pytest.mark.parametrize("change", [
    _set(["steps", 0, "bindings", 0], ["__resume_at_4_1", "skipped", 1]),  # no such skipped code
    _set(["steps", 0, "bindings", 0], ["__resume_at_4_1", "skipped", -1]),
    _set(["steps", 0, "bindings"], [["__compiled_fn_1_x", "graph", 0]]),  # a graph binding, no graph
    _set(["steps", 0, "frame", "inputs"], [[["L", "x"]]]),  # inputs without a graph
    _set(["skipped", 0, "code"], "ff00"),
    _set(["skipped"], "x"),
    _set(["name"], ["m", "f", "d", "e"]),  # the top chain is not named
    _set(["called", 0, "name"], None),  # a called chain is
    _set(["called", 0, "name"], ["os; import sys", "f", "d", "e"]),
    _set(["called", 0, "name"], ["m", "f", "d"]),
    _set(["called", 0, "called"], lambda doc: [dict(doc["called"][0])]),  # called frames of called frames
    _set(["called", 0, "steps", 1, "bindings"], []),  # its graph step calls no graph
    _set(["called"], lambda doc: [doc["called"][0]] * 65),
])
def test_malformed_called_frame_documents_are_refused(change: Any) -> None:
    _assert_refused(_calls_doc(), change)

"""Every reach into torch's and Triton's private internals, in one folder.

The rest of artcache reads as plain code and calls these modules; nothing outside this
folder imports ``torch._inductor``, ``torch._functorch``, ``torch._dynamo`` or ``triton``
(``tests/test_layout.py`` enforces it).  A torch upgrade is checked here, module by module.

Checked on (CPU: torch 2.13.0+cpu, the CI machine; GPU: torch 2.11.0+cu130 with Triton
3.6.0 on H100 and H200):

=================  ===========================================================  ==============================
module             what it touches                                              checked on
=================  ===========================================================  ==============================
patching           class attributes it patches and restores; lookups by name    2.11 (GPU), 2.13 (CPU)
capture            AOTAutogradCache's bundled entry; ``CppCodeCache.load_async``  2.11 (GPU), 2.13 (CPU)
rebuild            ``wrap_post_compile``, shape guards, lifted params/buffers    2.11 (GPU), 2.13 (CPU)
freezing           ``compile_fx.fw_compiler_freezing`` (its wrapper's closure),  2.13 (CPU); 2.11: tests/gpu
                   ``CompiledFxGraph.constants``/``frozen_param_names``,
                   ``cpp.weight_prepack``, ``unset_fake_temporarily``
settings           Inductor/functorch configs, modes, numerics switches          2.11 (GPU), 2.13 (CPU)
op_registry        custom-op registries (``torch._library``), decomposition     2.13 (CPU)
                   and lowering tables
key_inputs         inputs of torch's own cache keys beyond configs and          2.13 (CPU), 2.11 (H200)
                   numerics (autocast, hooks, user Triton source, ...)
entry_types        the classes a ``BundledAOTAutogradResult`` holds             2.11 (GPU), 2.13 (CPU)
entry_parts        reading a captured entry (graphs, source, guards, bundles)    2.11 (GPU), 2.13 (CPU)
lean_load          the hit without Inductor's compiler (wrapper source,         2.11 (GPU), 2.13 (CPU)
                   ``cache_hit_post_compile``, ``CompiledFxGraph.__call__``)
triton_codec       Triton kernel objects (``CachingAutotuner``, static           2.11 + Triton 3.6 (H100, H200)
                   launchers) for the pickler
triton_serve       the hit: cubins, autotune cache, ``ptxas`` alignment          2.11 + Triton 3.6 (H100, H200)
triton_tuning      the miss: first-run autotuning winners                        2.11 + Triton 3.6 (H100, H200)
static_launch      static launchers for kernels torch missed for their names    2.11 + Triton 3.6 (H100, H200)
import_cost        ``torch._inductor.remote_cache``'s ``import redis``, and     2.13 (CPU)
                   its ``redis`` global
logs               ``torch._logging`` log registry and ``trace_structured``,     2.13 (CPU)
                   ``torch._dynamo.utils.counters``
frame_capture      ``guard_filter_fn`` entries (2.11's and 2.13's HASATTR and   2.13 (CPU), 2.11 (H200:
                   DICT_CONTAINS forms), the instruction translator's side      GPT-2, resnet50, MLP;
                   effects, shape env and traced code, ``GlobalStateGuard``,    tests/gpu pc_ cases)
                   dispatch keys
frame_paths        ``torch._dynamo.source`` classes (paths of guards and graph  2.13 (CPU), 2.11 (H200)
                   inputs), the globals ``install_global_by_id`` names
precompile_hook    ``torch._dynamo.optimize`` (wrapped), ``enter_exit_hooks``,   2.13 (CPU, Python 3.11);
                   ``_load_precompile_entry``, ``GuardManagerWrapper`` lambda     absent internals: no
                   guards, ``trace_rules.check``, ``bytecode_transformation``    patch, Dynamo traces
backend_debug      ``eval_frame.get_compiler_fn`` (replaced; the precompile     2.13 (CPU); 2.11: H200
                   route gets a stand-in for ``WrapBackendDebug``),             (tests/test_backend_debug)
                   ``lookup_backend``, ``WrapBackendDebug.__init__``
guard_tree         ``GuardManagerWrapper`` accessors and leaf guards (tensor      2.13 (CPU); a guard the
                   match, type/id/equals, lengths, dict contains, global state)  API refuses: Python checks
code_codec         ``convert_frame.register_bytecode_hook`` and                 2.13 (CPU, Python 3.11);
                   ``initial_global_state``; code objects as fields (3.11)      other Pythons: frames with
                                                                                graph breaks fall back
shape_guards       the ``SHAPE_ENV`` guard's ``code_list`` (torch's text of the   2.13 (CPU); no code_list:
                   ShapeEnv's guards), ``input_source_to_sizes_strides``         the frame falls back
=================  ===========================================================  ==============================

On a CPU-only torch the Triton modules install nothing.  A reach that finds a class or
attribute missing degrades (a type not allowed, an entry not cached), never crashes.
"""

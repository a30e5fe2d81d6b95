"""An opt-in compiled forward: `load_model(..., compile=MODE)` or `compile_model(model, MODE)`.

    none             the eager forward (the default everywhere)
    default          torch.compile with inductor: C++/OpenMP kernels on a CPU, Triton on a GPU; the pointwise
                     chains (fp32 RMSNorm, RoPE and its casts, SwiGLU, residual adds) fuse into a few kernels
                     around the GEMMs and SDPA, and the per-op Python/dispatcher overhead goes
    reduce-overhead  the same plus CUDA graphs (inductor's cudagraph trees): a replayed step launches no kernel
                     from Python. On a GPU only (on a CPU it is `default`); NOT yet run on a GPU. The KV cache's
                     buffers are allocated by an eager first fill and marked static addresses (gpt-fast's way),
                     so that the cached steps that write them in place can be captured; inductor skips the
                     graph, and logs why, for a step it cannot capture

The model's own `forward` is compiled in place, so the engine's one loop, the model's type and its attributes are
unchanged. Dynamo guards separate the variants the loop calls: the full canvas (with or without a key mask, 2-D or
3-D), the forward that fills a KV cache and the cached step over a block. Shapes are dynamic from the first call
(`dynamic=True`), so prompt lengths, batch rows leaving, EoTP cuts and cached lengths reuse one graph per variant
instead of one per shape: no shape buckets, no padding (which would change the numerics). Dynamo still specialises
sizes 0 and 1 (batch 1 and batch > 1 are two graphs), so a decode compiles a handful of graphs, all on its first
call of each variant. `MAX_GRAPHS` bounds it (dynamo counts per forward's code, so the models of one class loaded
in a process share it): past it dynamo raises (fail_on_recompile_limit_hit) instead of silently falling back to
eager, so a sweep cannot recompile per request. `compile_stats(model)` counts the graphs
compiled and the seconds spent in the calls that compiled them, so a timed region can show it compiled nothing.

What it buys on a CPU (`python -m harness.bench --compile`): the embedded default's forward is mostly GEMM
arithmetic (29 GEMMs run near one core's peak, ~70% of the eager forward at 56 positions), so fusing the rest gives
~1.1x on a full forward and ~1.5x on a dual-cache step, not 2x; larger models gain less. Static shapes
(`dynamic=False`) were ~13% faster than dynamic ones on the dual step, at the cost of a graph per shape.
"""
from __future__ import annotations

import functools
import time

import torch

COMPILE_MODES = ("none", "default", "reduce-overhead")
MAX_GRAPHS = 16  # graphs per compiled forward (variants x the 0/1 size specialisations, with room to spare)


class CompileStats:
    """Graphs compiled by a model's forward and the wall seconds of the calls that compiled them."""

    def __init__(self, mode: str):
        self.mode, self.graphs, self.seconds = mode, 0, 0.0

    def as_dict(self) -> dict:
        return {"compile": self.mode, "compiled_graphs": self.graphs, "compile_seconds": self.seconds}


def check_compile_mode(mode: str) -> str:
    if mode not in COMPILE_MODES:
        raise ValueError(f"model.compile={mode!r}: choose one of {', '.join(COMPILE_MODES)}")
    return mode


def compile_model(model: torch.nn.Module, mode: str = "default") -> torch.nn.Module:
    """`model` with its forward compiled (in place; returned for chaining). `none` leaves it eager."""
    check_compile_mode(mode)
    if mode == "none" or hasattr(model, "compile_stats"):
        return model
    # Beyond MAX_GRAPHS an error, not a silent eager fallback (process-wide dynamo settings, set only here).
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, MAX_GRAPHS)
    torch._dynamo.config.fail_on_recompile_limit_hit = True
    compiled = torch.compile(model.forward, mode=None if mode == "default" else mode, dynamic=True, fullgraph=True)
    stats = CompileStats(mode)
    graphs = torch._dynamo.utils.counters["stats"]

    eager = model.forward

    @functools.wraps(eager)
    def forward(*args, **kwargs):
        cache = kwargs.get("cache")
        if mode == "reduce-overhead" and cache is not None and not cache.key_buffers:
            out = eager(*args, **kwargs)  # allocates the buffers outside any CUDA graph's memory pool
            for buffer in (*cache.key_buffers, *cache.value_buffers, cache.input_buffer):
                if buffer is not None:  # input_buffer: Dream's fed ids
                    torch._dynamo.mark_static_address(buffer)
            return out
        before, start = graphs["unique_graphs"], time.perf_counter()
        out = compiled(*args, **kwargs)
        if graphs["unique_graphs"] != before:  # this call compiled: its seconds are compile time
            stats.graphs += graphs["unique_graphs"] - before
            stats.seconds += time.perf_counter() - start
        return out

    model.forward, model.compile_stats = forward, stats
    return model


def compile_stats(model) -> dict:
    """The compile path of `model` (a `Metered` or other wrapper exposing the inner model's attributes):
    {"compile": mode, "compiled_graphs": n, "compile_seconds": s}; mode "none" for an eager model."""
    stats = getattr(model, "compile_stats", None)
    return stats.as_dict() if stats is not None else CompileStats("none").as_dict()

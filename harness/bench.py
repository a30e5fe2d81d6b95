"""Decoding-engine benchmark: forward cost per cache mode, engine overhead, NFE and wall time per strategy.

    python -m harness.bench                       # random LLaDA, d_model 512, 8 layers, CPU
    python -m harness.bench --preset llada-8b --device cuda --dtype bfloat16 --families published   # on a GPU
    python -m harness.bench --compile ...         # eager vs compiled forward instead (harness/bench_compile.py)

Prints figures; nothing here is asserted. Random weights make the NFE of confidence-driven strategies close to the
baseline's: the point is the cost of the machinery, not decoding quality. It ends with the learned filter's cost per
step: on a GPU, there, against this model's forward (and the peak GPU memory); always, on the CPU against a forward
of the embedded default, and with the native families (LLaDA, Dream, LLaDA2 MoE at small or published shapes): a
full and a cached step each, and the MoE layer's routing overhead. Steps are timed with torch.utils.benchmark's
Timer (the device synchronised around each sample, at torch's current thread count): median and IQR of `repeats`
samples, each of a fixed number of calls. Fixed and short, not blocked_autorange's blocks: those grow until the
clock's cost is 1e-4 of a block (100-1,000 calls of a microsecond step), long enough that on a shared machine nearly
every block is preempted (its filter figures read 2-4x high there), while the median of short samples skips those.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.benchmark import Measurement, Timer

from .decoding import DecodeConfig, generate
from .decoding.engine import Canvas
from .learn2pd.filter import Filter, load_filter, resolve_filter, save_filter
from .models import (
    DreamConfig,
    KVCache,
    LLaDAConfig,
    llada2_config,
    load_model,
    random_dream,
    random_llada,
    random_llada2,
)
from .models.layers import SwiGLU, fill_random
from .models.llada2 import LLaDA2Config, random_moe_layer
from .models.loading import NAMED_MODELS
from .models.metered import Metered, synchronize

PRESETS = {
    "small": dict(d_model=512, n_heads=8, n_layers=8, mlp_hidden_size=1536, vocab_size=32768),
    "llada-8b": dict(d_model=4096, n_heads=32, n_layers=32, mlp_hidden_size=12288, vocab_size=126464),
}
# The native families at comparable sizes: small (CPU) or the published checkpoints' shapes (a GPU).
FAMILY_SHAPES = {
    "small": {
        "llada": lambda: _llada_config(PRESETS["small"]),
        "dream": lambda: DreamConfig(hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                                     num_attention_heads=8, num_key_value_heads=2, vocab_size=32768,
                                     max_position_embeddings=4096, rope_theta=1e6, rms_norm_eps=1e-6,
                                     mask_token_id=32767, eos_token_id=32766, pad_token_id=32766),
        "llada2": lambda: llada2_config("small", max_position_embeddings=4096),
    },
    "published": {  # LLaDA-8B, Dream-v0-7B, LLaDA2.0-mini (16B MoE); flash (100B) does not fit one GPU
        "llada": lambda: _llada_config(PRESETS["llada-8b"]),
        "dream": lambda: DreamConfig(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                                     num_attention_heads=28, num_key_value_heads=4, vocab_size=152064,
                                     max_position_embeddings=131072, rope_theta=1e6, rms_norm_eps=1e-6,
                                     mask_token_id=151666, eos_token_id=151643, pad_token_id=151643),
        "llada2": lambda: llada2_config("mini"),
    },
}
RANDOM_MODEL = {"llada": random_llada, "dream": random_dream, "llada2": random_llada2}
RUNS = [  # (label, settings)
    ("baseline", dict(strategy="baseline")),
    ("baseline + prefix", dict(strategy="baseline", cache="prefix")),
    ("baseline + dual", dict(strategy="baseline", cache="dual")),
    ("threshold 0.9", dict(strategy="threshold", threshold=0.9)),
    ("threshold 0.9 + dual", dict(strategy="threshold", threshold=0.9, cache="dual")),
    ("factor 1.0", dict(strategy="factor", factor=1.0)),
    ("entropy_bounded 0.1", dict(strategy="entropy_bounded", gamma=0.1)),
    ("oracle", dict(strategy="oracle")),
    ("learned 0.96", dict(strategy="learned")),  # with a random filter of the paper's shape (main)
]


def time_call(run, repeats: int, calls_per_sample: int = 1) -> Measurement:
    """Seconds per `run()` (`.median`, `.iqr`) over `repeats` samples of `calls_per_sample` calls each (several, so
    that the clock's own cost vanishes from microsecond runs); Timer warms each sample up with two calls."""
    timer = Timer("run()", globals={"run": run}, num_threads=torch.get_num_threads())  # its default is 1 thread
    (measurement,) = Measurement.merge([timer.timeit(calls_per_sample) for _ in range(repeats)])
    return measurement


@torch.no_grad()
def forward_costs(model, ids: torch.Tensor, block_start: int, block_length: int, repeats: int) -> dict:
    """Measurements of one step: full canvas, prefix step (block + suffix), dual step (block only)."""
    for _ in range(3):  # untimed: clocks, allocator and kernel choices settle (a GPU's first forwards run slow)
        model(ids)
    cache = KVCache()
    model(ids, cache=cache)
    end = block_start + block_length
    return {
        "none": time_call(lambda: model(ids), repeats),
        "prefix": time_call(lambda: model(ids[:, block_start:], start=block_start, cache=cache), repeats),
        "dual": time_call(lambda: model(ids[:, block_start:end], start=block_start, cache=cache), repeats),
    }


@torch.no_grad()
def gpu_breakdown(model, ids: torch.Tensor, block_start: int, block_length: int, costs: dict, repeats: int) -> None:
    """Where a step's time goes on a GPU: kernel time and count (torch.profiler) against the eager wall time, and a
    CUDA-graph replay of the full forward, which is what the GPU needs without Python's launch overhead."""
    net = model.inner  # Metered synchronises inside its forward, which a graph capture forbids
    cache = KVCache()
    net(ids, cache=cache)
    end = block_start + block_length
    steps = {"none": lambda: net(ids), "dual": lambda: net(ids[:, block_start:end], start=block_start, cache=cache)}
    print("\n| step | eager ms | GPU kernel ms | kernels | CUDA-graph replay ms |\n|---|---|---|---|---|")
    for mode, run in steps.items():
        run()
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as profile:
            for _ in range(5):
                run()
            torch.cuda.synchronize()
        kernels = [e for e in profile.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
        kernel_ms = sum(e.self_device_time_total for e in kernels) / 5 / 1e3
        launched = sum(e.count for e in kernels) / 5
        replay = "-"
        if mode == "none":
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up off the default stream, as graph capture requires
                for _ in range(3):
                    run()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                run()
            replay = f"{time_call(graph.replay, repeats).median * 1e3:.1f}"
        print(f"| {mode} | {costs[mode].median * 1e3:.1f} | {kernel_ms:.1f} | {launched:.0f} | {replay} |")


def _llada_config(shape: dict) -> LLaDAConfig:
    vocab = shape["vocab_size"]
    return LLaDAConfig(n_kv_heads=shape["n_heads"], max_sequence_length=4096, rope_theta=500000.0, rms_norm_eps=1e-5,
                       mask_token_id=vocab - 1, eos_token_id=vocab - 2, pad_token_id=vocab - 2, **shape)


@torch.no_grad()
def moe_routing_overhead(cfg: LLaDA2Config, tokens: int, *, dtype: torch.dtype = torch.float32,
                         device: str | torch.device = "cpu", repeats: int = 10, seed: int = 0) -> dict:
    """Where one MoE layer's time goes for `tokens` tokens (a decoding step feeds batch × block_length), in
    seconds per call (medians):

    - `router`: gate matmul, sigmoid, group-limited top-k and the weights;
    - `dispatch`: the bookkeeping around the experts (sort by expert, gathers, putting the outputs back, the
      weighted sum): the layer's dispatch with every expert replaced by the identity;
    - `layer`: the whole MoE FFN (router, dispatch, routed and shared experts);
    - `dense`: a dense SwiGLU of the layer's active width ((top-k + shared) × moe_intermediate_size), the cost
      the same active parameters would have without routing.

    Plus `router_share` and `dispatch_share` (of the layer), `overhead_vs_dense` ((router + dispatch) / dense) and
    `layer_vs_dense`. The weights are seeded random, so the tokens spread over the experts as a trained router's
    would not exactly: the count of experts that receive tokens (`experts_used`) is reported with them.
    """
    layer = random_moe_layer(cfg, seed, dtype, device)
    active = cfg.moe_intermediate_size * (cfg.num_experts_per_tok + cfg.num_shared_experts)
    with torch.device("meta"):
        dense = SwiGLU(cfg.hidden_size, active)
    fill_random(dense, seed, dtype, device)
    x = torch.randn(tokens, cfg.hidden_size, generator=torch.Generator(device=device).manual_seed(seed),
                    device=device).to(dtype)
    experts, weights = layer.gate(x)
    for run in (lambda: layer(x), lambda: dense(x)):  # untimed: allocator and kernel choices settle
        run()
    seconds = {
        "router": time_call(lambda: layer.gate(x), repeats).median,
        "dispatch": time_call(lambda: layer.dispatch(x, experts, weights, lambda e, rows: rows), repeats).median,
        "layer": time_call(lambda: layer(x), repeats).median,
        "dense": time_call(lambda: dense(x), repeats).median,
    }
    return {
        "tokens": tokens, "experts_used": int(experts.unique().numel()), **seconds,
        "router_share": seconds["router"] / seconds["layer"],
        "dispatch_share": seconds["dispatch"] / seconds["layer"],
        "overhead_vs_dense": (seconds["router"] + seconds["dispatch"]) / seconds["dense"],
        "layer_vs_dense": seconds["layer"] / seconds["dense"],
    }


def family_steps(model, batch: int, prompt: int, gen_length: int, block_length: int) -> dict:
    """{label: run} of a full step and a cached step at the middle block (`family_costs`)."""
    device = model.device
    ids = torch.randint(0, model.vocab_size - 2, (batch, prompt), generator=torch.Generator().manual_seed(0))
    s = prompt + gen_length // block_length // 2 * block_length
    e, cache = s + block_length, KVCache()
    if model.block_diffusion:
        canvas = Canvas(ids.to(device), None, e - prompt, model.mask_token_id, model.eos_token_id, block_length)
        rows = torch.arange(batch, device=device)
        model(canvas.x[:, :s], **canvas.attention(rows, 0, s, s), cache=cache)
        return {f"canvas [0, {e}), block-causal": lambda: model(canvas.x[:, :e], **canvas.attention(rows, 0, e, e)),
                f"block [{s}, {e}), block cache":
                    lambda: model(canvas.x[:, s:e], **canvas.attention(rows, s, e, e), start=s, cache=cache)}
    x = torch.cat([ids, torch.full((batch, gen_length), model.mask_token_id)], 1).to(device)
    model(x, cache=cache)
    return {f"canvas [0, {x.shape[1]})": lambda: model(x),
            f"block [{s}, {e}), dual cache": lambda: model(x[:, s:e], start=s, cache=cache)}


@torch.no_grad()
def family_costs(shapes: str, dtype: torch.dtype, device: str, batch: int, prompt: int, gen_length: int,
                 block_length: int, repeats: int) -> None:
    """Per native family, random weights: ms per forward of a full step and of a cached step at the middle
    block. LLaDA and Dream: the whole canvas vs the block under the dual cache. LLaDA2 (block diffusion): the
    reference's step, the canvas up to the block's end under the block-causal mask, vs the block alone over its
    exact prefix cache. Then LLaDA2's MoE routing overhead at a cached step's and a full step's token count."""
    print(f"\n| family ({shapes} shapes) | parameters | full step | ms | cached step | ms | speed-up |"
          f"\n|---|---|---|---|---|---|---|")
    for family, make_config in FAMILY_SHAPES[shapes].items():
        cfg = make_config()
        model = RANDOM_MODEL[family](cfg, seed=0, dtype=dtype, device=device)
        (full_label, full), (cached_label, cached) = family_steps(model, batch, prompt, gen_length,
                                                                  block_length).items()
        for _ in range(3):  # untimed warm-up
            full(), cached()
        full_s, cached_s = time_call(full, repeats).median, time_call(cached, repeats).median
        params = sum(p.numel() for p in model.parameters())
        print(f"| {family} | {params / 1e6:.1f}M | {full_label} | {full_s * 1e3:.1f} | {cached_label} | "
              f"{cached_s * 1e3:.1f} | {full_s / cached_s:.2f}x |", flush=True)
        del model, full, cached  # one family's weights at a time
    moe = FAMILY_SHAPES[shapes]["llada2"]()
    print("\n| LLaDA2 MoE layer, tokens | experts used | router ms | dispatch ms | layer ms | dense SwiGLU ms "
          "(same active width) | router + dispatch share |\n|---|---|---|---|---|---|---|")
    for tokens in (batch * block_length, batch * (prompt + gen_length)):  # a cached step's tokens, a full one's
        cost = moe_routing_overhead(moe, tokens, dtype=dtype, device=device, repeats=repeats)
        print(f"| {tokens} | {cost['experts_used']} | {cost['router'] * 1e3:.2f} | {cost['dispatch'] * 1e3:.2f} | "
              f"{cost['layer'] * 1e3:.2f} | {cost['dense'] * 1e3:.2f} | "
              f"{cost['router_share'] + cost['dispatch_share']:.1%} |")


def time_filter_step(filter_, batch: int, mask: int, eos: int, repeats: int) -> Measurement:
    """Measurement of one decoding step of `filter_` (its token flags included) on a random block of `batch` rows,
    on the filter's device."""
    generator = torch.Generator().manual_seed(0)
    B = filter_.block_length
    confidence = torch.rand(batch, B, generator=generator)
    prediction = torch.randint(0, 4, (batch, B), generator=generator)  # tokens predicted more than once
    masked = torch.rand(batch, B, generator=generator) < 0.7
    tokens = torch.where(masked, mask, prediction)
    state = [t.to(filter_.linear1.weight.device) for t in (confidence, prediction, tokens, masked)]
    with torch.no_grad():
        return time_call(lambda: filter_.decode_logits(state[0], 3, *state[1:], eos), repeats, calls_per_sample=20)


@torch.no_grad()
def filter_overhead(repeats: int, batches: tuple[int, ...] = (1, 50)) -> None:
    """The learned filter's cost per step (its token flags included) against one forward of the embedded
    default model, at batch 1 (the paper's protocol) and at the quickstart's batch 50."""
    if not (NAMED_MODELS["tiny"] / "config.json").exists() or not resolve_filter("tiny").exists():
        print("\n(no embedded default model and filter in this checkout: filter overhead not measured)")
        return
    model, filter_ = load_model("tiny"), load_filter("tiny")
    print()
    for batch in batches:
        canvas = torch.full((batch, 56), model.mask_token_id)
        forward = time_call(lambda: model(canvas), max(repeats // batch, 5)).median
        step = time_filter_step(filter_, batch, model.mask_token_id, model.eos_token_id, repeats)
        print(f"learned filter, batch {batch}: {step.median * 1e6:.1f} us per step (IQR {step.iqr * 1e6:.1f}) = "
              f"{100 * step.median / forward:.2f} % of one forward of the embedded default ({forward * 1e3:.2f} ms, "
              f"56 positions)")


def filter_overhead_on_device(model, costs: dict, batch: int, block_length: int, repeats: int = 100) -> None:
    """On a GPU: the filter's step there (the torch branch) against this model's own steps, for Learn2PD's
    2-layer filter at this block length (random weights: the cost does not depend on them) and the shipped one."""
    torch.manual_seed(0)
    filters = {f"2-layer, B {block_length} (Learn2PD's)": Filter(block_length).to(model.device).eval()}
    try:
        filters["shipped tiny (3 layers, B 8, token flags)"] = load_filter("tiny", device=model.device)
    except FileNotFoundError:
        pass
    print()
    for label, filter_ in filters.items():
        step = time_filter_step(filter_, batch, model.mask_token_id, model.eos_token_id, repeats).median
        print(f"learned filter {label} on {model.device}, batch {batch}: {step * 1e6:.1f} us per step = "
              f"{100 * step / costs['none'].median:.2f} % of a full forward, "
              f"{100 * step / costs['dual'].median:.2f} % of a dual-cache step")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--gen-length", type=int, default=256)
    parser.add_argument("--block-length", type=int, default=32)
    parser.add_argument("--prompt-length", type=int, default=64)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed samples per forward measurement (60x as many for the learned filter's step)")
    parser.add_argument("--runs", nargs="*", help="labels of the strategy runs (default: all)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--families", choices=[*FAMILY_SHAPES, "none"], default="small",
                        help="the LLaDA / Dream / LLaDA2 step table at these shapes (published: on a GPU)")
    compiled = parser.add_argument_group("eager vs compiled (--compile; see harness/bench_compile.py)")
    compiled.add_argument("--compile", action="store_true", help="run the eager vs compiled tables instead")
    compiled.add_argument("--compile-mode", choices=["default", "reduce-overhead"], default="default")
    compiled.add_argument("--batches", type=int, nargs="*", help="batch sizes of the step table (default: --batch)")
    compiled.add_argument("--prompt-lengths", type=int, nargs="*", help="prompt lengths (default: --prompt-length)")
    compiled.add_argument("--bandwidth", type=float, help="peak memory bandwidth, GB/s (GPU: 3350 H100, 4800 H200)")
    compiled.add_argument("--problems", type=int, default=50, help="test problems per synthetic task (decodes)")
    compiled.add_argument("--decode-batch", type=int, default=50, help="rows per decode (the quickstart's 50)")
    compiled.add_argument("--decode-repeats", type=int, default=3, help="timed decodes per path, task and run")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.compile:
        from .bench_compile import run_compile_bench
        return run_compile_bench(args, PRESETS, _llada_config)
    runs = [r for r in RUNS if not args.runs or r[0] in args.runs]
    if args.runs and len(runs) != len(args.runs):
        parser.error(f"unknown run label; choose from {[label for label, _ in RUNS]}")
    if args.runs and "oracle" in args.runs and "baseline" not in args.runs:
        parser.error("the oracle run follows the baseline's answer: add 'baseline' to --runs")

    cfg = _llada_config(PRESETS[args.preset])
    vocab = cfg.vocab_size
    dtype = getattr(torch, args.dtype)
    model = Metered(random_llada(cfg, seed=0, dtype=dtype, device=args.device))
    params = sum(p.numel() for p in model.parameters())
    ids = torch.randint(0, vocab - 2, (args.batch, args.prompt_length),
                        generator=torch.Generator().manual_seed(0)).to(args.device)
    decode = dict(gen_length=args.gen_length, block_length=args.block_length)
    device_name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else \
        f"CPU, {torch.get_num_threads()} threads"
    print(f"# random LLaDA '{args.preset}': {params / 1e6:.1f}M parameters, d_model {cfg.d_model}, "
          f"{cfg.n_layers} layers, vocab {vocab}; {args.dtype} on {device_name}")
    print(f"# prompt {args.prompt_length}, G {args.gen_length}, B {args.block_length}, batch {args.batch}\n")

    canvas = torch.cat([ids, torch.full((args.batch, args.gen_length), cfg.mask_token_id, device=args.device)], 1)
    costs = forward_costs(model, canvas, args.prompt_length, args.block_length, args.repeats)
    print("| step | tokens fed | ms per forward | IQR ms | speed-up vs no cache |\n|---|---|---|---|---|")
    fed = {"none": canvas.shape[1], "prefix": args.gen_length, "dual": args.block_length}
    for mode, cost in costs.items():
        print(f"| {mode} | {fed[mode]} | {cost.median * 1e3:.1f} | {cost.iqr * 1e3:.1f} | "
              f"{costs['none'].median / cost.median:.2f}x |")

    print("\n| run | NFE | wall s | ms per NFE | engine overhead (% of forward time) |\n|---|---|---|---|---|")
    reference = None
    with tempfile.TemporaryDirectory() as scratch:
        torch.manual_seed(0)  # the learned run's filter: Learn2PD's 2-layer shape at this B, random weights
        random_filter = str(save_filter(Filter(args.block_length), Path(scratch) / "filter.safetensors"))
        for label, settings in runs:
            if settings["strategy"] == "learned":
                settings = {**settings, "filter_path": random_filter}
            config = DecodeConfig.create(**decode, **settings)
            policy = config.build_policy()  # built (a filter loaded) before the clock starts
            model.calls, model.seconds = 0, 0.0
            synchronize(model.device)
            start = time.perf_counter()
            out = generate(model, ids, config, reference=reference, policy=policy)
            synchronize(model.device)
            wall = time.perf_counter() - start
            if label == "baseline":
                reference = out.tokens
            overhead = (wall - model.seconds) / model.seconds * 100
            print(f"| {label} | {out.nfe.float().mean():.1f} | {wall:.2f} | {wall / model.calls * 1e3:.1f} | "
                  f"{overhead:.1f} % |", flush=True)
    if model.device.type == "cuda":
        gpu_breakdown(model, canvas, args.prompt_length, args.block_length, costs, args.repeats)
        filter_overhead_on_device(model, costs, args.batch, args.block_length)
        print(f"\npeak GPU memory: {torch.cuda.max_memory_allocated(model.device) / 2 ** 30:.1f} GiB")
    filter_overhead(repeats=60 * args.repeats)  # microsecond steps: many more samples than a forward needs
    if args.families != "none":
        del model  # the families' models take its memory
        family_costs(args.families, dtype, args.device, args.batch, args.prompt_length, args.gen_length,
                     args.block_length, args.repeats)


if __name__ == "__main__":
    main()

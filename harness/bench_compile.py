"""Eager vs compiled forward, side by side in one process (`python -m harness.bench --compile`).

    python -m harness.bench --compile --threads 1                      # CPU: inductor's C++ kernels
    python -m harness.bench --compile --device cuda --preset llada-8b --dtype bfloat16 \\
        --compile-mode reduce-overhead --batches 1 16 --prompt-lengths 64 1024 --bandwidth 4800   # a GPU

Every eager figure has its compiled twin measured alternately with it (sample by sample, same process), so the
machine's load hits both alike; medians with the IQR of the samples, and the spread of the paired ratios.

1. Steps: ops per forward (torch.profiler: on a CPU the leaf operators and inductor's generated kernels, compiled
   with `cpp.enable_kernel_profile` so that they are named; on a GPU the kernels launched) and ms per forward of
   the full canvas and of the dual-cache step (the block alone under the cache), for the embedded default (CPU
   only) and the preset's random LLaDA. On a GPU, also kernel ms per step (the profiler's device time), the wall
   over kernel ratio and the preset's weight-bandwidth limit (bf16 weights / --bandwidth GB/s), at each batch and
   prompt length.
2. Decodes (CPU, the embedded default and its Learn2PD filter): whole-decode wall time of baseline, threshold 0.9
   and learned, each without and with the dual cache, on `--problems` test problems of each synthetic task (one
   batch of up to `--decode-batch` per task, G 32, B 8): eager and compiled per batch alternately; the ratio's
   median and range over batches.
   The same decodes give the exactness figures: the share of rows whose tokens are identical, the accuracy of
   both paths, and for rows that differ the first differing position's eager top-2 logit margin.
The compile itself (first call of each variant) happens in an untimed warm-up; the graphs it built are printed.
"""
from __future__ import annotations

import copy
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

from .decoding import DecodeConfig, generate
from .models import KVCache, compile_model, compile_stats, load_model
from .models.metered import synchronize
from .tasks.evaluate import answer_text, left_pad
from .tasks.synthetic import TASKS, held_out

DECODE_RUNS = [("baseline", dict(strategy="baseline")), ("threshold 0.9", dict(strategy="threshold", threshold=0.9)),
               ("learned", dict(strategy="learned", filter_path="tiny", filter_threshold=0.8))]


def compiled_twin(model, mode: str):
    """A second view of `model` sharing its weights, with the forward compiled; `model` stays eager."""
    return compile_model(copy.copy(model), mode)


def paired_samples(runs: dict, repeats: int, calls: int, device, warmup: int = 3) -> dict[str, list[float]]:
    """Seconds per call of each run, `repeats` samples of `calls` calls each, the runs alternating sample by
    sample (each first run `warmup` times, untimed: any compiling happens there)."""
    samples = {label: [] for label in runs}
    for run in runs.values():
        for _ in range(warmup):
            run()
    for _ in range(repeats):
        for label, run in runs.items():
            synchronize(device)
            start = time.perf_counter()
            for _ in range(calls):
                run()
            synchronize(device)
            samples[label].append((time.perf_counter() - start) / calls)
    return samples


def median_iqr(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], 0.0
    q1, _, q3 = statistics.quantiles(values, n=4)
    return statistics.median(values), q3 - q1


def ops_per_forward(run, device) -> tuple[int, float]:
    """(operators or kernels one call runs, their device ms): on a GPU the kernels launched; on a CPU the leaf
    events (aten operators and inductor kernels that call nothing the profiler sees)."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    synchronize(device)
    with profile(activities=activities) as prof:
        run()
        synchronize(device)
    if device.type == "cuda":
        kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        return len(kernels), sum(e.self_device_time_total for e in kernels) / 1e3
    events = prof.events()
    parents = {id(e.cpu_parent) for e in events if e.cpu_parent is not None}
    leaves = [e for e in events if id(e) not in parents and (e.name.startswith("aten::") or "fused" in e.name)]
    return len(leaves), 0.0


def steps(model, batch: int, prompt: int, gen_length: int, block_length: int) -> dict:
    """{label: (forward, its arguments)} of the full canvas and of the dual step at the middle block; each call
    gets its own filled cache, so eager and compiled never share one."""
    ids = torch.randint(0, model.vocab_size - 2, (batch, prompt), generator=torch.Generator().manual_seed(0))
    x = torch.cat([ids, torch.full((batch, gen_length), model.mask_token_id)], 1).to(model.device)
    s = prompt + gen_length // block_length // 2 * block_length
    return {"full": (x, {}), "dual": (x[:, s:s + block_length], dict(start=s, fill=x))}


def bind(model, inputs, kwargs):
    if "fill" not in kwargs:
        return lambda: model(inputs)
    cache = KVCache(*kwargs["fill"].shape)  # preallocated for the canvas, as the engine does
    model(kwargs["fill"], cache=cache)
    return lambda: model(inputs, start=kwargs["start"], cache=cache)


@torch.no_grad()
def step_table(label: str, model, mode: str, batch: int, prompt: int, gen_length: int, block_length: int,
               repeats: int, calls: int, bandwidth: float | None) -> None:
    compiled = compiled_twin(model, mode)
    device = model.device
    medians = {}
    for step, (inputs, kwargs) in steps(model, batch, prompt, gen_length, block_length).items():
        runs = {"eager": bind(model, inputs, kwargs), "compiled": bind(compiled, inputs, kwargs)}
        samples = paired_samples(runs, repeats, calls, device)
        ratios = [e / c for e, c in zip(samples["eager"], samples["compiled"])]
        cells = []
        medians[step] = {path: median_iqr(times)[0] for path, times in samples.items()}
        for path, run in runs.items():
            ops, kernel_ms = ops_per_forward(run, device)
            wall, iqr = median_iqr(samples[path])
            cells.append(f"{ops} | {wall * 1e3:.2f} ± {iqr * 1e3:.2f}"
                         + (f" | {kernel_ms:.2f} | {wall * 1e3 / kernel_ms:.2f}x" if device.type == "cuda" else ""))
        limit = ""
        if bandwidth:  # every weight read once per forward, at the peak bandwidth
            weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
            limit = f" | {median_iqr(samples['compiled'])[0] / (weight_bytes / (bandwidth * 1e9)):.1f}x"
        print(f"| {label} | b{batch} p{prompt} | {step} | {cells[0]} | {cells[1]} | "
              f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}){limit} |", flush=True)
    print(f"<!-- {label} b{batch} p{prompt}: dual step's speed-up over a full step, eager "
          f"{medians['full']['eager'] / medians['dual']['eager']:.2f}x, compiled "
          f"{medians['full']['compiled'] / medians['dual']['compiled']:.2f}x; compiled graphs "
          f"{compile_stats(compiled)} -->")


def step_header(gpu: bool, bandwidth: float | None) -> None:
    per_path = "ops | ms ± IQR" + (" | kernel ms | wall/kernel" if gpu else "")
    columns = f"| model | shape | step | eager {per_path} | compiled {per_path} | eager/compiled (range)"
    columns += " | compiled / bandwidth limit |" if bandwidth else " |"
    print("\n" + columns + "\n" + "|---" * (columns.count("|") - 1) + "|")


@torch.no_grad()
def decode_table(mode: str, problems: int, repeats: int, batch_size: int) -> None:
    """Whole decodes of the embedded default, eager vs compiled, and their exactness (module docstring, 2)."""
    eager = load_model("tiny")
    compiled = compiled_twin(eager, mode)
    tokenizer = eager.tokenizer
    print(f"\n| run (batch {batch_size}) | eager s (sum) | compiled s | eager/compiled median (range over "
          "batches) | rows identical | accuracy eager | accuracy compiled | flips: first differing position's "
          "eager top-2 margin |"
          "\n|---|---|---|---|---|---|---|---|")
    tests = {name: [p.__dict__ for p in held_out(task)["test"][:problems]] for name, task in TASKS.items()}
    batches = [(name, ps[i:i + batch_size]) for name, ps in tests.items() for i in range(0, len(ps), batch_size)]
    for label, settings in DECODE_RUNS:
        for cache in ("none", "dual"):
            config = DecodeConfig.create(gen_length=32, block_length=8, cache=cache, **settings)
            policy = config.build_policy()
            seconds, ratios, same, rows, correct, margins = {"eager": 0.0, "compiled": 0.0}, [], 0, 0, {}, []
            for name, batch in batches:
                ids, mask = left_pad(tokenizer, [p["prompt"] for p in batch])
                samples, outs = paired_decodes({"eager": eager, "compiled": compiled}, ids, mask, config, policy,
                                               repeats)
                ratios.append(statistics.median(samples["eager"]) / statistics.median(samples["compiled"]))
                for path, tokens in outs.items():
                    seconds[path] += statistics.median(samples[path])
                    texts = answer_text(tokenizer, tokens, eager.eos_token_id)
                    correct[path] = correct.get(path, 0) + sum(TASKS[name].score(p, t) for p, t in zip(batch, texts))
                equal = (outs["eager"] == outs["compiled"]).all(-1)
                same, rows = same + int(equal.sum()), rows + len(batch)
                for row in (~equal).nonzero().flatten().tolist():
                    margins.append(flip_margin(eager, ids[row], mask[row], outs["eager"][row], outs["compiled"][row]))
            flips = ", ".join(f"{m:.2g}" for m in margins) or "-"
            print(f"| {label}{' + dual' if cache == 'dual' else ''} | {seconds['eager']:.2f} | "
                  f"{seconds['compiled']:.2f} | {statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"
                  f" | {same}/{rows} | {correct['eager'] / rows:.3f} | {correct['compiled'] / rows:.3f} | {flips} |",
                  flush=True)
    print(f"<!-- embedded default compiled graphs: {compile_stats(compiled)} -->")


def paired_decodes(models: dict, ids, mask, config, policy, repeats: int) -> tuple[dict, dict]:
    """`paired_samples` of whole decodes by each model (one untimed first: it compiles what it has not yet), and
    each model's tokens."""
    outs = {}

    def decode(path):
        def run():
            outs[path] = generate(models[path], ids, config, attention_mask=mask, policy=policy).tokens
        return run
    return paired_samples({path: decode(path) for path in models}, repeats, 1, ids.device, warmup=1), outs


def flip_margin(model, prompt, mask, eager_tokens, compiled_tokens) -> float:
    """The eager model's top-1 minus top-2 logit at the first position where the two decodes differ, read from
    a full forward over the prompt and the eager answer up to it masked from there on: a near-tie is small."""
    first = int((eager_tokens != compiled_tokens).nonzero()[0])
    tail = torch.full((len(eager_tokens) - first,), model.mask_token_id)
    canvas = torch.cat([prompt, eager_tokens[:first], tail])[None]
    logits = model(canvas, torch.cat([mask, torch.ones(len(eager_tokens), dtype=mask.dtype)])[None])
    top2 = logits[0, len(prompt) + first].float().topk(2).values
    return float(top2[0] - top2[1])


def run_compile_bench(args, presets: dict, llada_config) -> None:
    """`python -m harness.bench --compile`: the tables of the module docstring."""
    mode = args.compile_mode
    dtype = getattr(torch, args.dtype)
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    where = torch.cuda.get_device_name(device) if gpu else f"CPU, {torch.get_num_threads()} threads"
    print(f"# eager vs torch.compile(mode={mode!r}), {args.dtype} on {where}; torch {torch.__version__}")
    if not gpu:
        torch._inductor.config.cpp.enable_kernel_profile = True  # name inductor's kernels for the op counts
    step_header(gpu, args.bandwidth)
    if not gpu:
        tiny = load_model("tiny")
        step_table("embedded default", tiny, mode, args.batch, 24, 32, 8, args.repeats, 20, None)
    from .models import random_llada
    cfg = llada_config(presets[args.preset])
    model = random_llada(cfg, seed=0, dtype=dtype, device=device)
    label = f"{args.preset} LLaDA {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M"
    for batch in args.batches or [args.batch]:
        for prompt in args.prompt_lengths or [args.prompt_length]:
            step_table(label, model, mode, batch, prompt, args.gen_length, args.block_length, args.repeats,
                       1 if gpu else 2, args.bandwidth)
    del model
    if not gpu:
        decode_table(mode, args.problems, args.decode_repeats, args.decode_batch)

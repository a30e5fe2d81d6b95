"""Learn2PD filter pipeline.

    python -m harness.learn2pd collect --model tiny --task perm --out traces/perm.safetensors
    python -m harness.learn2pd collect --model /path/LLaDA-8B-Instruct --prompts flan.jsonl --field inputs ...
    python -m harness.learn2pd train traces/perm.safetensors --out filters/perm.safetensors
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ..decoding import DecodeConfig
from .filter import FEATURES, TOKEN_FEATURES, save_filter
from .traces import TraceSet, collect
from .training import train_filter


def read_prompts(args) -> list[str]:
    if args.task:
        from ..tasks.synthetic import TASKS, held_out, training_stream
        if args.task not in TASKS:
            raise SystemExit(f"unknown task {args.task!r}; choose from {sorted(TASKS)}")
        held = {p.prompt for ps in held_out(TASKS[args.task]).values() for p in ps}
        stream = training_stream(TASKS[args.task], exclude=held, seed=args.seed)
        return [next(stream).prompt for _ in range(args.num_prompts)]
    rows = [json.loads(line) for line in Path(args.prompts).read_text().splitlines() if line.strip()]
    if any(args.field not in row for row in rows):
        raise SystemExit(f"{args.prompts}: every line needs a {args.field!r} field")
    return [row[args.field] for row in rows[:args.num_prompts]]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("collect", help="baseline + traced oracle rollouts -> trace file")
    c.add_argument("--model", default="tiny")
    source = c.add_mutually_exclusive_group(required=True)
    source.add_argument("--task", help="a synthetic task: prompts from its training stream (held-out excluded)")
    source.add_argument("--prompts", help="a JSONL file of prompts")
    c.add_argument("--field", default="prompt", help="prompt field of --prompts lines (FLAN dumps: inputs)")
    c.add_argument("--num-prompts", type=int, default=400)
    c.add_argument("--gen-length", type=int, default=32)
    c.add_argument("--block-length", type=int, default=8)
    c.add_argument("--steps", type=int)
    c.add_argument("--eotp", action="store_true", help="reference and rollout with EoTP, so the filter sees "
                   "blocks cut short (train on these together with plain traces)")
    c.add_argument("--batch-size", type=int, default=50)
    c.add_argument("--chat-template", action="store_true", help="wrap prompts in the model's chat template")
    c.add_argument("--dtype", default="float32")
    c.add_argument("--device", default="cpu")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--out", type=Path, required=True)

    t = sub.add_parser("train", help="trace file -> filter checkpoint + metrics JSON")
    t.add_argument("traces", type=Path, nargs="+")
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--depth", type=int, default=2)
    t.add_argument("--hidden", type=int, help="hidden width (default: block_length)")
    t.add_argument("--features", nargs="+", default=["confidence"], choices=FEATURES)
    t.add_argument("--lr", type=float, default=3e-3)
    t.add_argument("--iterations", type=int, default=40_000)
    t.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    if args.command == "collect":
        from ..models import load_model
        config = DecodeConfig.create(gen_length=args.gen_length, block_length=args.block_length, steps=args.steps,
                                     eotp=args.eotp)
        prompts = read_prompts(args)
        model = load_model(args.model, dtype=getattr(torch, args.dtype), device=args.device)
        if model.tokenizer is None:
            raise SystemExit(f"{args.model}: no tokenizer files; trace collection needs one")
        traces = collect(model, prompts, config, args.batch_size, chat_template=args.chat_template,
                         meta={"model": str(args.model), "task": args.task or str(args.prompts)})
        traces.save(args.out)
        print(json.dumps(traces.meta))
    else:
        sets = [TraceSet.load(p) for p in args.traces]
        if len({s.confidence.shape[1] for s in sets}) != 1:
            raise SystemExit("trace files disagree on block_length")
        offsets = torch.tensor([0] + [s.meta["prompts"] for s in sets]).cumsum(0)
        shared = [k for k in TraceSet.TENSORS if k != "prompt" and all(getattr(s, k) is not None for s in sets)]
        merged = TraceSet(**{k: torch.cat([getattr(s, k) for s in sets]) for k in shared},
                          prompt=torch.cat([s.prompt + o for s, o in zip(sets, offsets)]),
                          meta={"sources": [s.meta for s in sets]})
        if set(args.features) & set(TOKEN_FEATURES) and merged.repeat is None:
            raise SystemExit(f"--features {' '.join(args.features)} needs token flags, which these trace files "
                             "lack (collected before they were recorded): collect them again")
        model, metrics = train_filter(merged, args.depth, args.hidden, tuple(args.features), args.lr,
                                      args.iterations, args.seed)
        save_filter(model, args.out, traces=[str(p) for p in args.traces])
        metrics_file = args.out.with_suffix(".json")
        metrics_file.write_text(json.dumps({"filter": model.metadata(), **metrics}, indent=2))
        print(json.dumps(metrics["validation"]), f"-> {args.out}, {metrics_file}")


if __name__ == "__main__":
    main()

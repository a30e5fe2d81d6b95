"""Decoding report on the synthetic tasks: accuracy, NFE, tokens per forward and wall time per strategy,
with the embedded default's quality bars checked against them.

    python -m harness.tasks.report --model tiny --problems 200 [--filter tiny --filter-thresholds 0.96 0.8] [--dual]
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import torch

from ..decoding import DecodeConfig
from ..models import load_model
from ..models.metered import time_forward
from .evaluate import evaluate_task, left_pad
from .synthetic import TASKS, held_out

GEN_LENGTH = 32
THRESHOLDS = (0.99, 0.95, 0.9, 0.8, 0.7, 0.5, 0.3)


@dataclass
class Cell:
    accuracy: float  # %
    nfe: float  # mean forwards per problem
    tpf: float  # answer tokens (before EOS) per forward
    seconds: float  # wall time for all problems of the task


def strategies(filter_path: str | None, filter_thresholds=(0.96,)) -> dict[str, dict]:
    rows = {"baseline": {}, "fixed k=2": dict(steps=GEN_LENGTH // 2), "fixed k=4": dict(steps=GEN_LENGTH // 4)}
    rows |= {f"threshold {t}": dict(strategy="threshold", threshold=t) for t in THRESHOLDS}
    rows["oracle"] = dict(strategy="oracle")
    if filter_path:
        rows |= {f"learned {tau}": dict(strategy="learned", filter_path=filter_path, **learned_thresholds(tau))
                 for tau in filter_thresholds}
    return rows


def learned_thresholds(spec: str) -> dict:
    """'0.8' -> tau_f 0.8; '0.75:0.96' -> tau_f 0.75 and outranked_threshold 0.96."""
    tau_f, _, tau_o = str(spec).partition(":")
    return dict(filter_threshold=float(tau_f), outranked_threshold=float(tau_o) if tau_o else None)


def threshold_spec(spec: str) -> str:
    """argparse type: a TAU_F[:TAU_O] that parses, checked before any decoding."""
    learned_thresholds(spec)  # ValueError -> argparse's one-line usage error
    return spec


def run(model, problems: dict[str, list[dict]], rows: dict[str, dict], variants, block_length: int) -> dict:
    """(label, eotp, cache, task) -> Cell. The oracle replays the baseline decode of the same variant."""
    cells = {}
    for eotp, cache in variants:
        reference = {}
        for label, extra in rows.items():
            config = DecodeConfig.create(gen_length=GEN_LENGTH, block_length=block_length, eotp=eotp, cache=cache,
                                         **extra)
            for task, probs in problems.items():
                start = time.perf_counter()
                r = evaluate_task(model, task, probs, config, batch_size=len(probs), reference=reference.get(task))
                seconds = time.perf_counter() - start
                if label == "baseline":
                    reference[task] = r.tokens
                answer_tokens = sum(len(model.tokenizer(o).input_ids) for o in r.outputs) / len(probs)
                cells[label, eotp, cache, task] = Cell(100 * r.accuracy, r.nfe, answer_tokens / r.nfe, seconds)
    return cells


def variant_name(eotp: bool, cache: str) -> str:
    return " + ".join(["EoTP"] * eotp + [f"{cache} cache"] * (cache != "none")) or "plain"


def print_tables(cells: dict, rows, variants, tasks) -> None:
    for task in tasks:
        print(f"\n### {task}{' (dependency task)' if TASKS[task].dependent else ''}\n")
        print("| strategy | " + " | ".join(variant_name(*v) for v in variants) + " |")
        print("|---|" + "---|" * len(variants))
        for label in rows:
            row = [cells.get((label, *v, task)) for v in variants]
            print(f"| {label} | " + " | ".join(
                f"{c.accuracy:.1f} / {c.nfe:.2f} / {c.tpf:.2f} / {c.seconds:.1f}s" if c else "–" for c in row) + " |")


def forward_ms(model, prompt: str) -> float:
    ids, _ = left_pad(model.tokenizer, [prompt])
    canvas = torch.cat([ids, torch.full((1, GEN_LENGTH), model.mask_token_id)], 1)
    with torch.no_grad():
        return 1e3 * time_forward(model, lambda: model(canvas), repeats=30)


def best_threshold_nfe(cells, task, eotp, cache, baseline_accuracy, within=1.0) -> float:
    """NFE of the cheapest threshold whose accuracy is within `within` points of the baseline."""
    ok = [cells[f"threshold {t}", eotp, cache, task].nfe for t in THRESHOLDS
          if cells[f"threshold {t}", eotp, cache, task].accuracy >= baseline_accuracy - within]
    return min(ok) if ok else float("nan")


def quality_bar(cells, tasks, forward, decode_seconds, problems) -> list[tuple[str, bool, float]]:
    checks = []
    for t in tasks:
        base = cells["baseline", False, "none", t]
        checks.append((f"{t}: baseline accuracy >= 70 %", base.accuracy >= 70, base.accuracy))
        saving = 100 * (1 - cells["baseline", True, "none", t].nfe / base.nfe)
        checks.append((f"{t}: EoTP cuts baseline NFE >= 40 %", saving >= 40, saving))
    for t in (t for t in tasks if TASKS[t].dependent):
        base = cells["baseline", False, "none", t].accuracy
        drop = base - min(cells["threshold 0.5", False, "none", t].accuracy, cells["fixed k=4", False, "none", t].accuracy)
        checks.append((f"{t}: tau 0.5 or k=4 loses >= 10 points", drop >= 10, drop))
        loss = base - cells["threshold 0.9", False, "none", t].accuracy
        checks.append((f"{t}: tau 0.9 within 2 points (loss)", loss <= 2, loss))
        for eotp in (False, True):  # each variant against its own baseline's accuracy
            same = cells["baseline", eotp, "none", t].accuracy
            ratio = cells["oracle", eotp, "none", t].nfe / best_threshold_nfe(cells, t, eotp, "none", same)
            checks.append((f"{t}: oracle NFE / best threshold within 1 point{' (EoTP)' if eotp else ''} <= 0.5",
                           ratio <= 0.5, ratio))
    checks.append(("one forward (ms) <= 10", forward <= 10, forward))
    checks.append((f"baseline decode of {problems} problems (s) < 60", decode_seconds < 60, decode_seconds))
    return checks


def learned_bar(cells, tasks, label: str) -> list[tuple[str, bool, float]]:
    checks = []
    for t in tasks:
        base = cells["baseline", False, "none", t]
        learned = cells[label, False, "none", t]
        checks.append((f"{t}: {label} within 1 point of baseline (loss)", base.accuracy - learned.accuracy <= 1,
                       base.accuracy - learned.accuracy))
        if TASKS[t].dependent:
            best = best_threshold_nfe(cells, t, False, "none", base.accuracy)
            oracle = cells["oracle", False, "none", t].nfe
            checks.append((f"{t}: {label} NFE below every threshold within 1 point", learned.nfe < best, learned.nfe))
            closed = (best - learned.nfe) / (best - oracle) if best > oracle else float("nan")
            checks.append((f"{t}: {label} closes >= 50 % of the threshold-oracle NFE gap", closed >= 0.5, closed))
    return checks


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--filter", help="a learned filter (file or 'tiny') to include")
    parser.add_argument("--filter-thresholds", nargs="+", default=["0.96"], type=threshold_spec,
                        metavar="TAU_F[:TAU_O]",
                        help="one learned row per tau_f (default: the paper's 0.96), with an optional "
                             "outranked_threshold after a colon")
    parser.add_argument("--problems", type=int, default=200, help="held-out test problems per task")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--block-length", type=int, default=8, help="B (G is 32; the embedded default uses 8)")
    parser.add_argument("--dual", action="store_true", help="also run every strategy with the dual cache")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    problems = {t: [vars(p) for p in held_out(TASKS[t])["test"][:args.problems]] for t in args.tasks}
    rows = strategies(args.filter, args.filter_thresholds)
    variants = [(eotp, cache) for cache in (["none", "dual"] if args.dual else ["none"]) for eotp in (False, True)]

    cells = run(model, problems, rows, variants, args.block_length)
    first = problems[args.tasks[0]]
    decode_seconds = cells["baseline", False, "none", args.tasks[0]].seconds  # the first decode: warm-up included

    print(f"# {args.model}: {args.problems} held-out test problems per task, G={GEN_LENGTH}, B={args.block_length}, "
          f"temperature 0, batch {args.problems}, {torch.get_num_threads()} CPU threads")
    print("cells: accuracy % / mean NFE / answer tokens per forward / wall time for the task's problems")
    print_tables(cells, rows, variants, args.tasks)
    checks = quality_bar(cells, args.tasks, forward_ms(model, first[0]["prompt"]), decode_seconds, args.problems)
    for label in (r for r in rows if r.startswith("learned")):
        checks += learned_bar(cells, args.tasks, label)
    print("\n## Bars\n")
    for name, ok, value in checks:
        print(f"- [{'x' if ok else ' '}] {name}: {value:.2f}")


if __name__ == "__main__":
    main()

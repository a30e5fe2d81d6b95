"""Load benchmark: do paired speedups survive a busy machine? Runs a 16-cell subset of the quickstart (baseline,
threshold τ, oracle and learned, ± EoTP, on the dependency tasks code and perm; no cache) through the real
Hydra app and store twice: once as the machine is, once while busy-loop processes (one per core) keep every
core busy. Prints a table per cell and whether the targets hold; asserts nothing.

    python -m harness.bench_load [--limit 50] [--batch-size 25] [--threshold 0.7] [--threads auto] [--only idle|loaded]

Targets: every cell's speedup within 25 % between the two runs; in both runs, every cell with NFE ratio >= 2
has a speedup > 1. Run it on an otherwise idle machine: the "idle" run is only as idle as the machine.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from analysis.collect import collect, method_label

from .run import REPO
from .timing import available_cores

TASKS = ("code", "perm")
WITHIN = 0.25  # speedup change allowed between the idle and the loaded run


def _spin() -> None:
    while True:
        pass


@contextmanager
def busy_cores(count: int):
    """`count` busy-loop processes for the duration of the block, always ended on leaving it."""
    context = multiprocessing.get_context("spawn")  # a clean interpreter: no copy of this process's state
    workers = []
    try:
        for _ in range(count):
            workers.append(context.Process(target=_spin, daemon=True))
            workers[-1].start()
        time.sleep(1)  # a worker that cannot start (a script without a __main__ guard) has usually ended by now
        if not all(worker.is_alive() for worker in workers):
            raise RuntimeError("a load generator process ended at start: the loaded run would not be loaded")
        yield workers
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.kill()
            if worker.pid is not None:
                worker.join()


def subset(threshold: float, tasks=TASKS) -> list[str]:
    """The quickstart's overrides that select the subset: every strategy (one τ), ± EoTP, no cache."""
    grids = (f"[{{decoding:baseline}},{{decoding:threshold,decoding.threshold:'{threshold}'}},"
             "{decoding:oracle},{decoding:learned}]")
    return ["experiment=quickstart", f"hydra.sweeper.grids={grids}", f"task={','.join(tasks)}",
            "decoding.cache=none"]


def sweep(store: Path, *, limit: int, batch_size: int, threshold: float, threads: str = "auto",
          tasks=TASKS) -> pd.DataFrame:
    """The subset, run as users run the quickstart (`python -m harness -m experiment=quickstart ...`, each cell
    recorded in `store`); returns the collected cells."""
    command = [sys.executable, "-m", "harness", "-m", *subset(threshold, tasks), f"store={store}",
               f"task.limit={limit}", f"batch_size={batch_size}", f"threads={threads}", "tracking=disabled",
               "analyse=false"]
    subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "HYDRA_FULL_ERROR": "1"})
    return cells_of(store)


def cells_of(store: Path) -> pd.DataFrame:
    """The store's cells, indexed by (task, method label)."""
    got = collect([store])
    if got.problems:
        raise RuntimeError("cells failed: " + "; ".join(got.problems))
    cells = got.cells.assign(method=got.cells.apply(method_label, axis=1))
    return cells.set_index(["task", "method"]).sort_index()


def _quoted(cell) -> str:
    return f"{cell.speedup:.2f} [{cell.speedup_q1:.2f}-{cell.speedup_q3:.2f}]"


def table(runs: dict[str, pd.DataFrame]) -> tuple[list[str], dict[str, bool]]:
    """Markdown rows (one per cell) comparing the runs, and the targets with whether they hold."""
    names = list(runs)
    first = runs[names[0]]
    header = ["task", "method", "NFE ratio", *(f"speedup {n} [IQR]" for n in names)]
    header += ["change"] if len(names) == 2 else []
    header += [f"trusted {n}" for n in names]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    targets = {f"{n}: NFE ratio >= 2 -> speedup > 1": True for n in names}
    if len(names) == 2:
        targets[f"speedups within {WITHIN:.0%} between the runs"] = True
    for key in first.index:
        cells = [runs[n].loc[key] for n in names]
        row = [*key, f"{cells[0].nfe_ratio:.2f}", *map(_quoted, cells)]
        if len(names) == 2:
            change = cells[1].speedup / cells[0].speedup - 1
            row.append(f"{change:+.0%}")
            targets[f"speedups within {WITHIN:.0%} between the runs"] &= abs(change) <= WITHIN
        for name, cell in zip(names, cells):
            row.append("yes" if cell.timing_trusted else "no")
            if cell.nfe_ratio >= 2:
                targets[f"{name}: NFE ratio >= 2 -> speedup > 1"] &= cell.speedup > 1
        lines.append("| " + " | ".join(row) + " |")
    return lines, targets


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=50, help="problems per task")
    parser.add_argument("--batch-size", type=int, default=25, help="the paired rounds decode one batch")
    parser.add_argument("--threshold", type=float, default=0.7)
    parser.add_argument("--threads", default="auto", help="torch threads per process (the sweep's `threads`)")
    parser.add_argument("--only", choices=["idle", "loaded"], help="run one of the two sweeps")
    args = parser.parse_args(argv)
    cores = available_cores()
    runs, seconds, load = {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in [args.only] if args.only else ["idle", "loaded"]:
            start, before = time.perf_counter(), os.getloadavg()[0]
            with busy_cores(cores if name == "loaded" else 0):
                runs[name] = sweep(Path(tmp) / name, limit=args.limit, batch_size=args.batch_size,
                                   threshold=args.threshold, threads=args.threads)
            seconds[name], load[name] = time.perf_counter() - start, (before, os.getloadavg()[0])
    print(f"# load benchmark: tiny LLaDA, tasks {'/'.join(TASKS)}, {args.limit} problems, batch {args.batch_size}, "
          f"threads {args.threads}, {cores} cores; loaded = {cores} busy-loop processes")
    for name in runs:
        print(f"# {name}: {seconds[name]:.0f} s, 1-min load average {load[name][0]:.1f} before, "
              f"{load[name][1]:.1f} after")
    lines, targets = table(runs)
    print("\n" + "\n".join(lines) + "\n")
    for target, holds in targets.items():
        print(f"target {target}: {'holds' if holds else 'MISSED'}")


if __name__ == "__main__":
    main()

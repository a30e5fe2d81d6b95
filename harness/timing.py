"""Timing a cell honestly on a shared machine: torch's thread count pinned per process, the paired speedup
(method and plain baseline decoding the same batch in alternating order, close together in time), and the
rule that flags a cell whose timing cannot be trusted.

Trust rule (`untrusted_reasons`): a cell's timing is flagged, `timing.trusted = false` with the reasons, when
- the process ran less than STARVED CPU-seconds per wall-second and thread during its timed decodes (it
  waited for cores other work held, so its tokens/s are the machine's, not the method's);
- the 1-minute load average before or after the cell exceeded the cores available to it by more than one
  (the run's own threads count in the load average: a run alone on its cores reads about `threads`);
- the paired speedups spread: IQR wider than SPREAD of their median;
- speedup and NFE ratio disagree in direction: NFE ratio >= AGREE but speedup < 1, or NFE ratio <= 1/AGREE
  but speedup > 1 (a method that saves forwards cannot honestly be slower, and vice versa).
"""
from __future__ import annotations

import os
import statistics
import time
from contextlib import contextmanager

import torch

from .decoding import ConfigError

STARVED = 0.5  # CPU-seconds per wall-second and thread below which the process waited for cores
SPREAD = 0.25  # IQR over median above which the paired speedups are too noisy to quote
AGREE = 1.25  # NFE ratio beyond which speedup must point the same way


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def parallel_jobs() -> int:
    """Jobs the Hydra launcher runs at once in this machine (joblib's n_jobs; 1 for the basic launcher)."""
    from hydra.core.hydra_config import HydraConfig
    if not HydraConfig.initialized():
        return 1
    n_jobs = HydraConfig.get().launcher.get("n_jobs")
    if not n_jobs:
        return 1
    return max(1, available_cores() + 1 + n_jobs if n_jobs < 0 else n_jobs)  # joblib: -1 is every core


def resolve_threads(setting) -> int:
    """`threads`: `auto` (the cores available to the process divided among the launcher's parallel jobs) or
    a positive integer."""
    if str(setting) == "auto":
        return max(1, available_cores() // parallel_jobs())
    try:
        threads = int(str(setting))
    except ValueError:
        threads = 0
    if threads < 1:
        raise ConfigError(f"threads must be auto or a positive integer, got {setting!r}")
    return threads


def pin_threads(setting) -> int:
    """Apply `threads` to torch's intra-op pool (and the inter-op pool, which torch lets a process set only
    before its first parallel work: a later cell of the same process keeps the first value)."""
    threads = resolve_threads(setting)
    torch.set_num_threads(threads)
    if torch.get_num_interop_threads() != threads:
        try:
            torch.set_num_interop_threads(threads)
        except RuntimeError:
            pass  # already started; the record keeps the count actually in use
    return threads


@contextmanager
def observed(timing: dict):
    """Load average before and after a block, written into `timing`."""
    timing["load_average"] = list(os.getloadavg())
    try:
        yield timing
    finally:
        timing["load_average_after"] = list(os.getloadavg())


def process_seconds() -> tuple[float, float]:
    """(wall, CPU of every thread of this process) clocks."""
    return time.perf_counter(), time.process_time()


def paired_ratios(decode_reference, decode_method, rounds: int) -> list[float]:
    """Per round, the method's throughput over the reference's on the same batch; the order alternates
    (reference first in even rounds, method first in odd ones: ABBA) so that drift cancels. Each decode
    returns (tokens, seconds)."""
    ratios = []
    for round_ in range(rounds):
        if round_ % 2 == 0:
            reference, method = decode_reference(), decode_method()
        else:
            method, reference = decode_method(), decode_reference()
        if not reference[0]:
            raise ValueError("the plain baseline counted no tokens on the paired batch: no speedup to measure")
        ratios.append((method[0] / method[1]) / (reference[0] / reference[1]))
    return ratios


def spread(ratios: list[float]) -> tuple[float, float, float]:
    """(median, first quartile, third quartile) of the paired ratios."""
    if len(ratios) < 2:
        return ratios[0], ratios[0], ratios[0]
    q1, median, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    return median, q1, q3


def untrusted_reasons(*, speedup: float, q1: float, q3: float, nfe_ratio: float | None, cpu_seconds: float,
                      wall_seconds: float, threads: int, cores: int, load_average: list[float],
                      load_average_after: list[float]) -> list[str]:
    """The trust rule (module docstring): the reasons this timing cannot be trusted; empty when it can."""
    reasons = []
    share = cpu_seconds / (wall_seconds * threads) if wall_seconds > 0 else 1.0
    if share < STARVED:
        reasons.append(f"CPU time {share:.2f} of wall time x {threads} threads (< {STARVED}): the process "
                       f"waited for cores")
    load = max(load_average[0], load_average_after[0])
    if load > cores + 1:
        reasons.append(f"load average {load:.1f} above the {cores} cores + 1")
    if q3 - q1 > SPREAD * speedup:
        reasons.append(f"paired speedups spread {(q3 - q1) / speedup:.0%} of their median (> {SPREAD:.0%})")
    if nfe_ratio is not None and ((nfe_ratio >= AGREE and speedup < 1) or (nfe_ratio <= 1 / AGREE and speedup > 1)):
        reasons.append(f"speedup {speedup:.2f} and NFE ratio {nfe_ratio:.2f} disagree in direction")
    return reasons

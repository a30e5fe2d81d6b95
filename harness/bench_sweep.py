"""Sweep overhead benchmark: the time a cell spends outside decoding (process start-up, model load,
lm-eval, W&B) as a share of its decoding time. Prints figures; asserts nothing.

    python -m harness.bench_sweep [--task arith] [--limit 100] [--batch-size 1]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STARTUP = "import time; t = time.perf_counter(); import harness.run, lm_eval, wandb; print(time.perf_counter() - t)"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="arith")
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--decoding", default="baseline")
    args = parser.parse_args(argv)

    startup = float(subprocess.run([sys.executable, "-c", STARTUP], capture_output=True, text=True,
                                   check=True).stdout.split()[-1])
    from hydra import compose, initialize_config_dir

    from .cli import CONF
    from .run import cell_settings, run_cell
    from .tracking import finish_cell, start_cell
    with tempfile.TemporaryDirectory() as tmp, initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[f"task={args.task}", f"task.limit={args.limit}", f"store={tmp}",
                                           f"batch_size={args.batch_size}", f"decoding={args.decoding}",
                                           "tracking=disabled"])
        settings = cell_settings(cfg, "cpu")
        cells = [run_cell(settings, Path(tmp) / "first", "cpu"),  # loads the model
                 run_cell({**settings, "force": True}, Path(tmp) / "further", "cpu")]  # model already loaded
        samples = [json.loads(line) for line in (Path(tmp) / "further" / "samples.jsonl").read_text().splitlines()]
        wandb_seconds = []  # the first W&B run of a process pays for wandb's own start-up
        for cell in cells:
            start = time.perf_counter()
            run = start_cell({"mode": "offline", "project": "dllm-harness-bench"}, cell, Path(tmp) / "further")
            finish_cell(run, cell, samples, "acc,none")
            wandb_seconds.append(time.perf_counter() - start)

    print(f"# one {args.decoding} cell: task {args.task}, {args.limit} problems, batch {args.batch_size}, "
          f"CPU; W&B offline\n")
    print("| cell | decode s | start-up s | model load s | lm-eval + warm-up s | W&B s | overhead / decode |")
    print("|---|---|---|---|---|---|---|")
    for label, record, wandb_s, first in (("first of a process", cells[0], wandb_seconds[0], True),
                                          ("each further cell", cells[1], wandb_seconds[1], False)):
        t = record["timings"]
        lm_eval = t["evaluate"] - t["decode"]
        extra = (startup if first else 0.0) + t["model_load"] + lm_eval + wandb_s
        print(f"| {label} | {t['decode']:.2f} | {startup if first else 0:.2f} | {t['model_load']:.2f} | "
              f"{lm_eval:.2f} | {wandb_s:.2f} | {100 * extra / t['decode']:.1f} % |")


if __name__ == "__main__":
    main()

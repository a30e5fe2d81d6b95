"""Write the synthetic tasks' JSONL splits: python -m harness.tasks --out DIR"""
import argparse
from pathlib import Path

from .synthetic import SPLIT_SIZES, TASKS, write_splits

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--out", type=Path, required=True)
parser.add_argument("--seed", type=int, default=1234)
args = parser.parse_args()
write_splits(args.out, args.seed)
print(f"wrote {sorted(TASKS)} x {SPLIT_SIZES} problems to {args.out.resolve()}")

"""The benchmark runs end to end on a small canvas (its figures are printed, never asserted)."""
import pytest

import torch

from harness.bench import RUNS, family_costs, main


def test_bench_prints_a_row_per_run_and_the_filter_cost(capsys):
    labels = ["baseline", "baseline + dual", "oracle", "learned 0.96"]
    main(["--gen-length", "16", "--block-length", "8", "--prompt-length", "4", "--repeats", "1", "--families", "none",
          "--runs", *labels])
    out = capsys.readouterr().out
    rows = {line.split(" | ")[0].strip("| "): line for line in out.splitlines() if line.startswith("| ")}
    for step in ("none", "prefix", "dual"):  # ms per forward (the median of Timer's samples) and its IQR
        median, iqr = (float(cell) for cell in rows[step].split(" | ")[2:4])
        assert median > 0 and iqr >= 0
    assert all(label in rows for label in labels) and not set(rows) & {label for label, _ in RUNS} - set(labels)
    assert rows["baseline"].split(" | ")[1] == "16.0"  # one token per step over G = 16
    assert float(rows["oracle"].split(" | ")[1]) < 16  # the baseline's own answer, in fewer forwards
    assert "learned filter, batch 1:" in out and "learned filter, batch 50:" in out


def test_bench_refuses_an_oracle_run_without_its_baseline(capsys):
    with pytest.raises(SystemExit):
        main(["--runs", "oracle"])
    assert "add 'baseline' to --runs" in capsys.readouterr().err


def test_bench_times_each_native_family_and_the_moe_routing(capsys):
    family_costs("small", torch.float32, "cpu", batch=1, prompt=4, gen_length=16, block_length=8, repeats=1)
    rows = [line.split(" | ") for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    steps = {row[0].strip("| "): row for row in rows if len(row) == 7 and row[0].strip("| ") in ("llada", "dream",
                                                                                                "llada2")}
    assert set(steps) == {"llada", "dream", "llada2"}
    assert "block-causal" in steps["llada2"][2] and "block cache" in steps["llada2"][4]
    assert all(float(row[3]) > 0 and float(row[5]) > 0 for row in steps.values())
    moe = [row for row in rows if row[0].strip("| ") in ("8", "20")]  # a cached step's tokens, a full step's
    assert len(moe) == 2 and all(float(row[-1].strip(" |%")) > 0 for row in moe)  # a share; timings not judged

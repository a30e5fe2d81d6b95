"""The benchmark runs end to end on a small canvas (its figures are printed, never asserted)."""
import pytest

from harness.bench import RUNS, main


def test_bench_prints_a_row_per_run_and_the_filter_cost(capsys):
    labels = ["baseline", "baseline + dual", "oracle", "learned 0.96"]
    main(["--gen-length", "16", "--block-length", "8", "--prompt-length", "4", "--repeats", "1", "--runs", *labels])
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

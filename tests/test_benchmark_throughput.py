"""`run_search.py benchmark` on tiny data: the CSV's columns and ratios, and refused input."""
import pandas as pd
import pytest

import run_search
from benchmarks.throughput import COLUMNS


def test_benchmark_writes_the_epochs_side_by_side(tiny_data_dir, tmp_path, capsys):
    out = tmp_path / "throughput.csv"
    assert run_search.main(["benchmark", "--data", str(tiny_data_dir), "--out", str(out), "--variants", "conv_ae",
                            "--batch-sizes", "16", "--crops", "64", "--repeats", "1"]) == 0
    table = pd.read_csv(out)
    assert list(table.columns) == COLUMNS
    assert sorted(table["device"]) in (["cpu"], ["cpu", "cuda"])  # one row per device for one variant and batch
    row = table[table["device"] == "cpu"].iloc[0]
    assert row["crops"] == 64 and (row[[c for c in COLUMNS if c.endswith("_s_per_epoch")]] > 0).all()
    assert row["project_vs_bare"] == pytest.approx(row["project_s_per_epoch"] / row["bare_s_per_epoch"])
    assert row["seed_vs_project"] == pytest.approx(row["seed_pipeline_s_per_epoch"]
                                                   / row["project_augmented_s_per_epoch"])
    options = pd.read_csv(tmp_path / "throughput-options.csv")
    assert set(options["option"]) == {"fp32", "bf16", "channels_last", "bf16+channels_last"}
    assert "project/bare median" in capsys.readouterr().out


@pytest.mark.parametrize("variant, message", [("nope_ae", "--variants: unknown nope_ae"),
                                              ("pca_ae", "fitted in closed form")])
def test_benchmark_refuses_variants_without_an_epoch(tiny_data_dir, tmp_path, capsys, variant, message):
    assert run_search.main(["benchmark", "--data", str(tiny_data_dir), "--out", str(tmp_path / "t.csv"),
                            "--variants", variant]) == 2
    assert message in capsys.readouterr().err

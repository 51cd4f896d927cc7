"""`run_search.py benchmark` on tiny data: the CSV's columns and ratios, and refused input."""
import pandas as pd
import pytest

from benchmarks.throughput import COLUMNS
import run_search


def test_benchmark_writes_the_epochs_side_by_side(tiny_data_dir, tmp_path, capsys):
    out = tmp_path / "throughput.csv"
    assert run_search.main(["benchmark", "--data", str(tiny_data_dir), "--out", str(out), "--variants", "conv_ae",
                            "--batch-sizes", "16", "--crops", "64", "--repeats", "1"]) == 0
    table = pd.read_csv(out)
    assert list(table.columns) == COLUMNS
    assert sorted(table["device"]) in (["cpu"], ["cpu", "cuda"])  # one row per device for one variant and batch
    row = table[table["device"] == "cpu"].iloc[0]
    assert row["crops"] == 64 and row["variant"] == "conv_ae" and row["batch_size"] == 16
    # Both loops train the same model on the same crops: a ratio far from 1 means one of them did other
    # work (or none). Loose bounds, as timings on a shared machine are noisy.
    assert 0.2 < row["project_vs_bare"] < 5
    options = pd.read_csv(tmp_path / "throughput-options.csv")
    assert set(options["option"]) == {"fp32", "bf16", "channels_last", "bf16+channels_last"}
    assert options.set_index("option").loc["fp32", "vs_fp32"] == 1.0  # the yardstick against itself
    assert "project/bare median" in capsys.readouterr().out


@pytest.mark.parametrize("variant, message", [("nope_ae", "--variants: unknown nope_ae"),
                                              ("pca_ae", "fitted in closed form")])
def test_benchmark_refuses_variants_without_an_epoch(tiny_data_dir, tmp_path, capsys, variant, message):
    assert run_search.main(["benchmark", "--data", str(tiny_data_dir), "--out", str(tmp_path / "t.csv"),
                            "--variants", variant]) == 2
    assert message in capsys.readouterr().err

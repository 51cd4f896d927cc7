"""What a user sees in the MLflow UI after a sweep, in a real browser: Playwright drives Debian's
Chromium (no browser download) against a real `mlflow server`. Screenshots go to test-artifacts/.

Skipped, with the reason, where /usr/bin/chromium or Playwright is absent; CI installs both.
"""
from pathlib import Path

import pytest
import ray
from mlflow.tracking import MlflowClient

from anomaly_ae.tracking.mlflow_runs import runs_page
import run_search
from services import REPO, free_port, start_mlflow_server, stop, tiny_sweep_args

# slow: minutes of real processes; CI's suite must stay under 10 minutes (README, "Tests": what CI runs)
pytestmark = [pytest.mark.integration, pytest.mark.slow]
CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = REPO / "test-artifacts"


def needs_browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"Debian's chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")


@pytest.fixture(scope="module")
def ui_sweep(tiny_data_dir, tmp_path_factory):
    """A searched sweep (ASHA stops some trials), promoted, logged to a real `mlflow server`."""
    needs_browser()
    root = tmp_path_factory.mktemp("ui")
    port = free_port()
    server = start_mlflow_server(root, port)
    url = f"http://127.0.0.1:{port}"
    try:
        args = tiny_sweep_args(tiny_data_dir, "ui-test", url, root / "ray", samples=5, epochs=3)
        args[args.index("--max-concurrent") + 1] = "1"  # a fixed trial order: the same trials get stopped
        # Seed 3's first five draws (measured) hold a trial ASHA stops and trials that run their budget.
        assert run_search.main([*args, "--no-baselines", "--no-warm-start", "--seed", "3"]) == 0
        ray.shutdown()
        assert run_search.main(["promote", "--experiment", "ui-test", "--tracking-uri", url, "--model-name", "ui-test",
                                "--config-out", str(root / "best.yaml"), "--no-references"]) == 0
        client = MlflowClient(url)
        exp = client.get_experiment_by_name("ui-test")
        parent = client.search_runs([exp.experiment_id], "tags.sweep = 'parent'")[0]
        yield url, client, exp.experiment_id, parent
    finally:
        stop(server)


@pytest.fixture(scope="module")
def browser():
    needs_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


def open_page(browser, address: str, shot: str, wait_for: str):
    page = browser.new_page(viewport={"width": 1500, "height": 950})
    page.goto(address)
    page.get_by_text(wait_for).first.wait_for(state="attached", timeout=60_000)
    page.wait_for_timeout(1500)  # let the table and charts settle before the screenshot
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / shot))
    assert (SCREENSHOTS / shot).stat().st_size > 10_000
    return page


def status_icon(page, run_name: str) -> str:
    row = page.locator("[role=row]").filter(has_text=run_name).first
    return row.locator("[col-id=runDateAndNestInfo] svg").first.inner_html()


def test_the_printed_link_opens_the_sweep_sorted_by_best_objective_with_honest_statuses(ui_sweep, browser):
    url, client, experiment_id, parent = ui_sweep
    trials = client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    trials = [r for r in trials if "trial_id" in r.data.tags]
    stopped = [r for r in trials if r.data.tags.get("stopped_by") == "asha"]
    ran_out = [r for r in trials if "stopped_by" not in r.data.tags and r.info.status == "FINISHED"]
    assert stopped and ran_out, "the sweep should have trials ASHA stopped and trials that ran their budget"
    page = open_page(browser, f"{url}/{runs_page(experiment_id, parent.info.run_id)}", "mlflow_runs_page.png",
                     trials[0].info.run_name)
    assert "orderByKey=metrics.%60best_objective%60" in page.url and "orderByAsc=false" in page.url
    text = page.inner_text("body")
    assert "Model training" in text and "objective" in text
    # Both objectives are columns beside the one the sweep is judged by (the tiny data has a site pool).
    assert "best/objective_clean" in text and "best/objective_site" in text
    for run in trials:  # every trial is listed by a name that starts with its variant
        assert run.info.run_name.startswith(run.data.tags["variant"])
        assert run.info.run_name[:12] in text
    # Rows in the leaderboard's order (best epoch's objective): its first trial comes before its last.
    from sweeps.runs import sweep_frame

    frame = sweep_frame(client, parent)
    first, last = frame.iloc[0], frame.iloc[-1]
    assert all(r.data.metrics["best_objective"] == b for r, b in
               ((client.get_run(rid), b) for rid, b in zip(frame["run_id"], frame["best_objective"])))
    if first["best_objective"] > last["best_objective"]:
        names = {r.info.run_id: r.info.run_name for r in trials}
        assert text.index(names[first["run_id"]][:12]) < text.index(names[last["run_id"]][:12])
    # A stopped trial shows the same status icon as one that ran its whole budget (not a red cross).
    finished_icon = status_icon(page, ran_out[0].info.run_name[:20])
    for run in stopped:
        assert status_icon(page, run.info.run_name[:20]) == finished_icon
    page.close()


def test_the_chart_view_opens_on_the_objective_section(ui_sweep, browser):
    url, _, experiment_id, parent = ui_sweep
    page = open_page(browser, f"{url}/{runs_page(experiment_id, parent.info.run_id)}&compareRunsMode=CHART",
                     "mlflow_charts.png", "Model metrics")
    text = page.inner_text("body")
    # The first section holds the objective, val AUROC and train loss; per-score figures have their own.
    assert text.index("Model metrics") < text.index("by_score/")
    first = text[text.index("Model metrics"):text.index("\nval\n")]
    assert "objective" in first and "val_auroc" in first and "train_loss" in first, first[:500]
    page.close()


def test_the_parent_run_charts_the_search(ui_sweep, browser):
    url, client, experiment_id, parent = ui_sweep
    page = open_page(browser, f"{url}/#/experiments/{experiment_id}/runs/{parent.info.run_id}/model-metrics"
                              "?workflowType=machine_learning", "mlflow_parent_metrics.png", "best_so_far")
    for chart in ("best_so_far", "best_objective"):  # the first row; charts further down render on scroll
        assert page.get_by_text(chart, exact=True).count() >= 1, chart
    page.close()


def test_the_champion_version_page_shows_the_alias_and_the_test_figures(ui_sweep, browser):
    url, client, _, _ = ui_sweep
    version = client.get_model_version_by_alias("ui-test", "champion")
    page = open_page(browser, f"{url}/#/models/ui-test/versions/{version.version}", "mlflow_champion.png",
                     "champion")
    text = page.inner_text("body")
    assert "test_tpr" in text and "test_tnr" in text
    assert f"{float(version.tags['test_tpr']):.4f}" in text  # the description's table, not only a tag name
    page.close()

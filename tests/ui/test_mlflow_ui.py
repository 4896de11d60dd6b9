"""The MLflow UI shows a tiny training run: its row in the runs table, params, metric charts, checkpoints."""

from __future__ import annotations

import re

import pytest
from mlflow.tracking import MlflowClient
from playwright.sync_api import expect

from core.run import run

EXPERIMENT = "UI-Check"
RUN_NAME = "ui-check"
EPOCHS = 2  # two points, so each metric chart draws a line
# MLflow 3 keeps the GenAI / Model training switch per browser (GenAI by default); a fresh browser
# opening `#/experiments/<id>` lands on the GenAI overview even for an experiment tagged
# custom_model_development, so the links name the view.
ML_VIEW = "workflowType=machine_learning"


@pytest.mark.timeout(300)
def test_mlflow_ui_shows_the_run(page, shot, tiny_on_server, tmp_path, mlflow_server):
    cfg = tiny_on_server(f"tracking.experiment={EXPERIMENT}", f"tracking.run_name={RUN_NAME}", f"train.epochs={EPOCHS}")
    result = run(cfg, tmp_path / "outputs" / "r")
    stored = MlflowClient(mlflow_server).get_run(result.run_id)
    experiment_url = f"{mlflow_server}/#/experiments/{stored.info.experiment_id}"
    run_url = f"{experiment_url}/runs/{result.run_id}"

    # The experiment's runs table lists the run, linked to its page.
    page.goto(f"{experiment_url}/runs?{ML_VIEW}")
    expect(page.get_by_role("link", name=RUN_NAME, exact=True)).to_have_attribute(
        "href", re.compile(f"/runs/{result.run_id}$")
    )
    shot(page, "experiment-runs")

    # The run page, opened through the link the run prints: its name, and params as the store holds them.
    assert result.run_url == f"{run_url}?{ML_VIEW}"
    page.goto(result.run_url)
    expect(page.get_by_role("heading", name=RUN_NAME, exact=True)).to_be_visible()
    page.get_by_placeholder("Search parameters").fill("train.")
    for key in ("train.epochs", "train.lr", "train.batch_size"):
        row = page.get_by_role("row").filter(has=page.get_by_role("cell", name=key, exact=True))
        expect(row.get_by_role("cell").nth(1)).to_have_text(stored.data.params[key])
        row.scroll_into_view_if_needed()
    assert stored.data.params["train.epochs"] == str(EPOCHS)
    shot(page, "run-overview")

    # Model metrics: a card per metric, titled with its name, holding a plotted line. The grid only
    # renders the cards in view, so each one is brought up through the charts' search box.
    page.get_by_role("tab", name="Model metrics").click()
    for metric in ("val_acc", "train_loss"):
        page.get_by_placeholder("Search metric charts").fill(metric)
        card = page.get_by_test_id("experiment-view-compare-runs-card").filter(
            has=page.get_by_role("heading", name=metric, exact=True)
        )
        expect(card.locator(".js-plotly-plot svg.main-svg").first).to_be_visible()
        expect(card.locator(".scatterlayer path.js-line").first).to_have_attribute("d", re.compile(r"^M.*L"))
        shot(page, f"run-metrics-{metric}")

    # Artifacts: both checkpoints under checkpoints/, and last.pt's details once selected.
    page.get_by_role("tab", name="Artifacts").click()
    page.get_by_text("checkpoints", exact=True).click()
    for name in ("last.pt", "best.pt"):
        expect(page.get_by_text(name, exact=True)).to_be_visible()
    page.get_by_text("last.pt", exact=True).click()
    expect(page.get_by_text(re.compile(r"^Path: .*/checkpoints/last\.pt$"))).to_be_visible()
    # The folder slides open: wait until each row is still and on top (a trial click checks both),
    # or the screenshot catches it half drawn.
    for name in ("best.pt", "last.pt", "confusion"):
        page.get_by_text(name, exact=True).click(trial=True)
    shot(page, "run-artifacts")

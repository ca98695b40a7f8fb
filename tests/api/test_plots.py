"""An experiment's plots, drawn from stored results, served as PNG or SVG."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from hwctl.report import PLOT_NAMES
from hwctl.store.engine import make_engine
from tests.api.conftest import assert_problem
from tests.api.results_data import Campaign, write_campaign

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def campaign(db_url: str) -> Campaign:
    engine = make_engine(db_url)
    try:
        return write_campaign(engine)
    finally:
        engine.dispose()


@pytest.mark.parametrize("name", PLOT_NAMES)
def test_every_plot_of_a_finished_campaign_is_a_png(
    client: TestClient, campaign: Campaign, name: str
) -> None:
    response = client.get(f"/experiments/{campaign.experiment_id}/plots/{name}")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert response.content.startswith(PNG_SIGNATURE) and len(response.content) > 1000


def test_svg_is_served_on_request(client: TestClient, campaign: Campaign) -> None:
    response = client.get(f"/experiments/{campaign.experiment_id}/plots/accuracy", params={"format": "svg"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("image/svg+xml")
    assert b"<svg" in response.content


def test_unknown_plot_is_404_listing_the_plots(client: TestClient, campaign: Campaign) -> None:
    problem = assert_problem(client.get(f"/experiments/{campaign.experiment_id}/plots/pie"), 404, "'pie'")
    assert all(name in problem["detail"] for name in PLOT_NAMES)


def test_plot_of_an_unknown_experiment_is_404(client: TestClient) -> None:
    assert_problem(client.get("/experiments/999/plots/accuracy"), 404, "experiment 999")


def test_unsupported_image_format_is_422(client: TestClient, campaign: Campaign) -> None:
    response = client.get(f"/experiments/{campaign.experiment_id}/plots/accuracy", params={"format": "gif"})
    assert_problem(response, 422, "format")

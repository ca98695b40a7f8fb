"""Readouts, device series, downloads, evaluations and fits, read back through the API."""

from __future__ import annotations

import io

import numpy as np
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from hwctl.store.engine import make_engine
from hwctl.store.fits import load_device_fit
from tests.api.conftest import assert_problem
from tests.api.results_data import OFFSETS_S, Campaign, write_campaign


@pytest.fixture
def campaign(db_url: str) -> Campaign:
    engine = make_engine(db_url)
    try:
        return write_campaign(engine)
    finally:
        engine.dispose()


def test_readouts_of_an_experiment_are_listed_in_schedule_order(
    client: TestClient, campaign: Campaign
) -> None:
    page = client.get("/readouts", params={"experiment_id": campaign.experiment_id}).json()
    assert page["total"] == len(OFFSETS_S)
    assert [r["offset_s"] for r in page["items"]] == list(OFFSETS_S)
    assert {r["n_devices"] for r in page["items"]} == {campaign.device_map.n_devices}
    assert client.get("/readouts", params={"experiment_id": campaign.experiment_id + 1}).json()["total"] == 0


def test_readout_downloads_as_npy_bit_for_bit(client: TestClient, campaign: Campaign) -> None:
    response = client.get(f"/readouts/{campaign.readout_ids[1]}/vector")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/octet-stream"
    assert "attachment" in response.headers["content-disposition"]
    g_us = np.load(io.BytesIO(response.content), allow_pickle=False)
    assert g_us.dtype == np.float32
    np.testing.assert_array_equal(g_us, campaign.g_us[1])


def test_readout_downloads_as_long_parquet_with_addresses(client: TestClient, campaign: Campaign) -> None:
    response = client.get(f"/readouts/{campaign.readout_ids[2]}/vector", params={"format": "parquet"})
    assert response.status_code == 200
    table = pq.read_table(io.BytesIO(response.content))
    assert table.column_names == ["readout_id", "offset_s", "device", "address", "g_us"]
    np.testing.assert_array_equal(table["g_us"].to_numpy(), campaign.g_us[2])
    np.testing.assert_array_equal(table["address"].to_numpy(), campaign.device_map.addresses)
    assert set(table["offset_s"].to_pylist()) == {OFFSETS_S[2]}


def test_device_series_gives_time_since_that_device_was_programmed(
    client: TestClient, campaign: Campaign
) -> None:
    device = 5
    series = client.get(f"/runs/{campaign.run_id}/devices/{device}/series").json()
    board_s = np.array([r["board_time_s"] for r in client.get("/readouts").json()["items"]])
    np.testing.assert_allclose(series["t_s"], board_s - campaign.programmed_s[device])
    np.testing.assert_allclose(series["g_us"], [g[device] for g in campaign.g_us], rtol=1e-6)


def test_device_outside_the_run_is_a_clear_error(client: TestClient, campaign: Campaign) -> None:
    n = campaign.device_map.n_devices
    assert_problem(client.get(f"/runs/{campaign.run_id}/devices/{n}/series"), 422, f"device {n}")
    assert_problem(client.get(f"/runs/{campaign.run_id + 7}/devices/0/series"), 404, "does not exist")


def test_experiment_detail_carries_results_so_far(client: TestClient, campaign: Campaign) -> None:
    detail = client.get(f"/experiments/{campaign.experiment_id}").json()
    assert detail["progress"]["readouts_done"] == detail["progress"]["readouts_planned"] == len(OFFSETS_S)
    assert detail["progress"]["evaluations_done"] == 2 * len(OFFSETS_S)
    accuracy = {(e["offset_s"], e["method"]): e["accuracy"] for e in detail["evaluations"]}
    assert accuracy[(OFFSETS_S[2], "none")] == 80.0
    assert accuracy[(OFFSETS_S[2], "gdc")] == 89.0


def test_evaluations_filter_by_method(client: TestClient, campaign: Campaign) -> None:
    query = {"experiment_id": campaign.experiment_id, "method": "gdc"}
    page = client.get("/evaluations", params=query).json()
    assert page["total"] == len(OFFSETS_S)
    assert [e["accuracy"] for e in page["items"]] == [91.0, 90.0, 89.0]
    one = client.get(f"/evaluations/{page['items'][0]['id']}").json()
    assert one == page["items"][0]


def test_drift_fit_serves_its_summary_outliers_and_per_bin_statistics(
    client: TestClient, campaign: Campaign, db_url: str
) -> None:
    engine = make_engine(db_url)
    with engine.connect() as conn:
        stored = load_device_fit(conn, campaign.fit_id)
    engine.dispose()
    fits = client.get("/fits", params={"experiment_id": campaign.experiment_id}).json()
    assert fits["total"] == 1
    fit = fits["items"][0]
    assert fit["summary"] == stored.summary and fit["n_devices"] == campaign.device_map.n_devices
    assert fit["outliers"]["dead"] == {"count": 1, "first": [campaign.dead_device]}
    assert fit["outliers"]["stuck"] == {"count": 0, "first": []}
    assert client.get(f"/fits/{campaign.fit_id}").json() == fit

    bins = client.get(f"/fits/{campaign.fit_id}/bins").json()["bins"]
    assert bins == stored.bins and len(bins) == 10
    assert sum(b["n_devices"] for b in bins) == int((campaign.device_map.target_g_us > 0).sum())

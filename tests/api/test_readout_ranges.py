"""A readout's .npy download over real HTTP (uvicorn, httpx): streamed from its stored
blocks, and any single byte range of it served as 206 with Content-Range, 416 past the end."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest

from api.app import create_app
from api.server import BackgroundServer
from hwctl.store import readouts as store_readouts
from hwctl.store.engine import make_engine
from tests.api.conftest import AUTH, api_settings, migrated_sqlite_url
from tests.api.results_data import Campaign, write_campaign

BLOCK_DEVICES = 7  # the test readout is stored in several blocks of 7 devices and a shorter last one


@pytest.fixture
def live(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[httpx.Client, Campaign, bytes]]:
    """A live API over a campaign whose last readout is stored in blocks of 7 devices;
    yields the client, the campaign and that readout as `np.save` writes it."""
    url = migrated_sqlite_url(tmp_path)
    engine = make_engine(url)
    monkeypatch.setattr(store_readouts, "STORED_BLOCK_DEVICES", BLOCK_DEVICES)
    try:
        campaign = write_campaign(engine)
    finally:
        engine.dispose()
    assert campaign.device_map.n_devices > 3 * BLOCK_DEVICES
    expected = io.BytesIO()
    np.save(expected, campaign.g_us[-1], allow_pickle=False)
    with (
        BackgroundServer(create_app(api_settings(url))) as server,
        httpx.Client(base_url=server.url, headers=AUTH, timeout=30.0) as client,
    ):
        yield client, campaign, expected.getvalue()


def _vector(client: httpx.Client, campaign: Campaign, range_header: str | None = None) -> httpx.Response:
    headers = {} if range_header is None else {"Range": range_header}
    return client.get(f"/readouts/{campaign.readout_ids[-1]}/vector", headers=headers)


def test_the_whole_npy_is_what_np_save_writes_and_says_it_takes_ranges(
    live: tuple[httpx.Client, Campaign, bytes],
) -> None:
    client, campaign, expected = live
    response = _vector(client, campaign)
    assert response.status_code == 200
    assert response.content == expected
    assert response.headers["accept-ranges"] == "bytes"
    assert int(response.headers["content-length"]) == len(expected)
    np.testing.assert_array_equal(np.load(io.BytesIO(response.content)), campaign.g_us[-1])


def test_any_single_range_is_exactly_those_bytes_with_its_content_range(
    live: tuple[httpx.Client, Campaign, bytes],
) -> None:
    client, campaign, expected = live
    size = len(expected)
    header_bytes = expected.index(b"\n") + 1
    block_bytes = 4 * BLOCK_DEVICES
    edges = [0, 1, header_bytes - 1, header_bytes, header_bytes + 1, header_bytes + block_bytes - 1,
             header_bytes + block_bytes, header_bytes + 2 * block_bytes + 3, size - 2, size - 1]  # fmt: skip
    for first in edges:
        for last in (e for e in edges if e >= first):
            response = _vector(client, campaign, f"bytes={first}-{last}")
            assert response.status_code == 206, (first, last)
            assert response.content == expected[first : last + 1], (first, last)
            assert response.headers["content-range"] == f"bytes {first}-{last}/{size}"
            assert int(response.headers["content-length"]) == last - first + 1


def test_open_ended_suffix_and_overlong_ranges_are_clipped_to_the_file(
    live: tuple[httpx.Client, Campaign, bytes],
) -> None:
    client, campaign, expected = live
    size = len(expected)
    tail = _vector(client, campaign, f"bytes={size - 10}-")
    assert (tail.status_code, tail.content) == (206, expected[-10:])
    suffix = _vector(client, campaign, "bytes=-5")
    assert (suffix.status_code, suffix.content) == (206, expected[-5:])
    assert suffix.headers["content-range"] == f"bytes {size - 5}-{size - 1}/{size}"
    longer = _vector(client, campaign, f"bytes=-{size + 100}")
    assert (longer.status_code, longer.content) == (206, expected)
    past = _vector(client, campaign, f"bytes=3-{size + 1_000}")
    assert past.content == expected[3:] and past.headers["content-range"] == f"bytes 3-{size - 1}/{size}"


def test_a_range_starting_past_the_end_is_416_with_the_size(
    live: tuple[httpx.Client, Campaign, bytes],
) -> None:
    client, campaign, expected = live
    for unsatisfiable in (
        f"bytes={len(expected)}-",
        f"bytes={len(expected) + 5}-{len(expected) + 9}",
        "bytes=-0",
    ):
        response = _vector(client, campaign, unsatisfiable)
        assert response.status_code == 416, unsatisfiable
        assert response.headers["content-range"] == f"bytes */{len(expected)}"
        # a problem like every other error (it was an empty body)
        assert response.headers["content-type"].startswith("application/problem+json")
        assert str(len(expected)) in response.json()["detail"]


def test_ranges_it_does_not_serve_get_the_whole_file(live: tuple[httpx.Client, Campaign, bytes]) -> None:
    """Several ranges, other units and garbage are ignored, as RFC 9110 allows: 200, all bytes."""
    client, campaign, expected = live
    for ignored in ("bytes=0-3,10-20", "items=0-3", "bytes=9-2", "bytes=", "nonsense"):
        response = _vector(client, campaign, ignored)
        assert (response.status_code, response.content) == (200, expected), ignored


def test_parquet_streams_one_row_group_per_stored_block(live: tuple[httpx.Client, Campaign, bytes]) -> None:
    client, campaign, _ = live
    response = client.get(f"/readouts/{campaign.readout_ids[-1]}/vector", params={"format": "parquet"})
    assert response.status_code == 200
    parquet = pq.ParquetFile(io.BytesIO(response.content))
    assert parquet.metadata.num_row_groups == -(-campaign.device_map.n_devices // BLOCK_DEVICES)
    table = parquet.read()
    np.testing.assert_array_equal(table["g_us"].to_numpy(), campaign.g_us[-1])
    np.testing.assert_array_equal(table["device"].to_numpy(), np.arange(campaign.device_map.n_devices))
    np.testing.assert_array_equal(table["address"].to_numpy(), campaign.device_map.addresses)


def test_a_missing_readout_is_404_before_anything_streams(live: tuple[httpx.Client, Campaign, bytes]) -> None:
    client, _, _ = live
    response = client.get("/readouts/999/vector", headers={"Range": "bytes=0-9"})
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"

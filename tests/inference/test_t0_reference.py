"""An inference's GDC reference is the mean of every read the run took at t0, as the
campaign's own evaluations use it (read draws, `schedule.reads_per_point`)."""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
import pytest

from hwctl.inference.run import ChipNetwork, InferenceSettings
from hwctl.store.campaign import load_spec
from hwctl.store.datasets import load_inputs
from hwctl.store.engine import make_engine
from hwctl.store.networks import load_network
from hwctl.store.readouts import first_offset_readouts, load_readout, load_run_device_map
from hwctl.vocabulary import DEFAULT_GDC_STATISTIC, CompensationMethod
from tests.inference.conftest import Live, digits_checkpoint, live_service

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]
DIGITS = 1  # the built-in digits test set's id
READS = 2


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    network = ("digits.pt", digits_checkpoint())
    with live_service("sqlite", tmp_path_factory.mktemp("db"), network, reads_per_point=READS) as service:
        yield service


def test_an_inference_is_compensated_against_the_mean_of_the_t0_reads(live: Live) -> None:
    at = live.readout_ids[-1]
    accepted = live.client.post(
        f"/experiments/{live.experiment_id}/inferences",
        json={"dataset_id": DIGITS, "at": at, "methods": ["gdc"]},
    )
    assert accepted.status_code == 202, accepted.text
    assert live.wait(accepted.json()["job"]["id"])["status"] == "succeeded"
    inference_id = accepted.json()["inference"]["id"]
    summary = live.client.get(f"/inferences/{inference_id}").json()["summary"]
    logits = np.load(io.BytesIO(live.client.get(f"/inferences/{inference_id}/logits.npy").content))

    engine = make_engine(live.url)
    try:
        with engine.connect() as conn:
            run_id = load_readout(conn, at).run_id
            t0_ids = first_offset_readouts(conn, run_id)
            mean_t0_us = np.mean([load_readout(conn, i).g_us for i in t0_ids], axis=0).astype(np.float32)
            checkpoint = load_network(conn, load_spec(conn, live.experiment_id).network_id)
            network = ChipNetwork(checkpoint, load_run_device_map(conn, run_id), None, DEFAULT_GDC_STATISTIC)
            inputs = load_inputs(conn, DIGITS, 10**9)
            g_at_us = load_readout(conn, at).g_us
            first_t0_us = load_readout(conn, t0_ids[0]).g_us
    finally:
        engine.dispose()
    assert len(t0_ids) == READS and summary["t0_readout_ids"] == t0_ids
    settings = InferenceSettings(methods=(CompensationMethod.GDC,))
    [expected] = network.infer(inputs, g_at_us, settings, mean_t0_us)
    np.testing.assert_allclose(logits[0, 0], expected.logits, rtol=1e-5, atol=1e-5)
    [first_read_only] = network.infer(inputs, g_at_us, settings, first_t0_us)
    assert not np.allclose(first_read_only.logits, expected.logits)  # the mean is not draw 0

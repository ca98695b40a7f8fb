"""A run's stored results read in parts: the map's placement, a fit's header, blob ranges."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import Engine

from hwctl.analysis.bounded_plots import bounded_figure
from hwctl.analysis.drift import fit_drift
from hwctl.mapping import DeviceMap
from hwctl.report import analyze_experiment
from hwctl.store.blob_ranges import open_blob
from hwctl.store.errors import NotFoundError
from hwctl.store.fits import load_device_fit, save_device_fit
from hwctl.store.readouts import ProgrammingResult
from hwctl.store.run_parts import latest_fit_header, map_placement, map_targets, programming_vectors
from hwctl.store.scans import scanning
from hwctl.store.schema import device_fits, programming_runs
from tests.api.results_data import write_campaign

OFFSETS_S = np.array([25.0, 250.0, 2_500.0])


def _save_fit(engine: Engine, run: int, n: int) -> int:
    rng = np.random.default_rng(3)
    g0_us, nu = rng.uniform(2, 25, n), rng.uniform(0.02, 0.08, n)
    fit = fit_drift(g0_us[None, :] * (OFFSETS_S[:, None] / 25.0) ** -nu[None, :], OFFSETS_S)
    with engine.begin() as conn:
        return save_device_fit(conn, run, fit, statistics={"bins": []}, extra_summary={"n_readouts": 3})


def test_the_maps_placement_is_read_without_its_targets(
    engine: Engine, programmed_run: tuple[int, ProgrammingResult], device_map: DeviceMap
) -> None:
    with engine.connect() as conn:
        mapping_id = conn.execute(programming_runs.select()).one().mapping_id
        geometry, layers = map_placement(conn, mapping_id)
    assert geometry == device_map.geometry and layers == device_map.layers


def test_any_byte_range_of_a_stored_vector_reads_as_stored(
    engine: Engine, programmed_run: tuple[int, ProgrammingResult], device_map: DeviceMap
) -> None:
    run, _ = programmed_run
    fit_id = _save_fit(engine, run, device_map.n_devices)
    with engine.connect() as conn:
        stored = load_device_fit(conn, fit_id).nu.tobytes()
        with open_blob(conn, device_fits, "nu_blob", fit_id) as blob:
            assert blob.read() == stored
            for offset, size in ((0, 4), (40, 100), (len(stored) - 8, 64)):
                blob.seek(offset)
                assert blob.read(size) == stored[offset : offset + size]
            blob.seek(-4, 2)
            assert blob.read() == stored[-4:]
        header = latest_fit_header(conn, run)
        with pytest.raises(NotFoundError), open_blob(conn, device_fits, "nu_blob", fit_id + 1):
            pass
    assert header is not None and header.fit_id == fit_id and header.has_status
    assert header.summary["n_readouts"] == 3 and header.statistics == {"bins": []}


def test_a_run_without_a_fit_has_no_header(
    engine: Engine, programmed_run: tuple[int, ProgrammingResult]
) -> None:
    with engine.connect() as conn:
        assert latest_fit_header(conn, programmed_run[0]) is None


def test_the_targets_and_chosen_programming_vectors_are_read_alone(
    engine: Engine, programmed_run: tuple[int, ProgrammingResult], device_map: DeviceMap
) -> None:
    run, result = programmed_run
    with engine.connect() as conn:
        mapping_id = conn.execute(programming_runs.select()).one().mapping_id
        targets = map_targets(conn, mapping_id)
        vectors = programming_vectors(conn, run, ("status", "programmed_s"))
    np.testing.assert_array_equal(targets, device_map.target_g_us)
    assert set(vectors) == {"status", "programmed_s"}
    np.testing.assert_array_equal(vectors["status"], result.status)
    np.testing.assert_array_equal(vectors["programmed_s"], result.programmed_s)


def test_a_scan_reads_what_the_mapped_connection_reads(
    engine: Engine, programmed_run: tuple[int, ProgrammingResult]
) -> None:
    run, result = programmed_run
    with engine.connect() as conn:
        with scanning(conn) as scan:
            vectors = programming_vectors(scan, run, ("programmed_s",))
        again = programming_vectors(conn, run, ("programmed_s",))
        if conn.dialect.name == "sqlite":
            assert conn.exec_driver_sql("PRAGMA mmap_size").scalar() > 0  # the map is back
    np.testing.assert_array_equal(vectors["programmed_s"], result.programmed_s)
    np.testing.assert_array_equal(again["programmed_s"], result.programmed_s)


def test_the_heatmap_read_in_ranges_is_the_whole_analysis_heatmap_on_either_database(engine: Engine) -> None:
    campaign = write_campaign(engine)
    with engine.connect() as conn:
        bounded = bounded_figure(conn, campaign.experiment_id, "heatmap")
        whole = analyze_experiment(conn, campaign.experiment_id, forecast=False).figure("heatmap")
    assert bounded is not None
    (got,), (want,) = bounded.axes[0].get_images(), whole.axes[0].get_images()
    np.testing.assert_allclose(got.get_array().filled(0), want.get_array().filled(0), rtol=1e-6)
    np.testing.assert_allclose(got.get_clim(), want.get_clim(), rtol=1e-6)

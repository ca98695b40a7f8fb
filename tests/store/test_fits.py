"""Drift fits, readout listings and evaluation listings as the API and reports read them."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import Engine, insert, update

from hwctl.analysis.drift import DriftFit, FitStatus, fit_drift
from hwctl.analysis.statistics import chip_statistics
from hwctl.mapping import DeviceMap
from hwctl.store import records
from hwctl.store.engine import make_engine
from hwctl.store.errors import CorruptVectorError, NotFoundError, StoreError
from hwctl.store.fits import latest_device_fit, load_device_fit, save_device_fit
from hwctl.store.migrate import current_revision, downgrade, upgrade
from hwctl.store.readouts import ProgrammingResult, add_readout, list_readouts, start_programming_run
from hwctl.store.schema import device_fits, programming_runs
from hwctl.store.vectors import encode
from tests.store.conftest import GEOMETRY

OFFSETS_S = (25.0, 250.0, 2_500.0, 25_000.0)


def _drifted_readouts(engine: Engine, run: int, g0_us: np.ndarray, nu: np.ndarray) -> np.ndarray:
    """Readouts of G(t) = G0·(t/25 s)^−ν at each offset; returns the times used."""
    with engine.begin() as conn:
        for offset in reversed(OFFSETS_S):  # stored out of order on purpose
            g = (g0_us * (offset / 25.0) ** -nu).astype(np.float32)
            add_readout(conn, run, offset_s=offset, scheduled_s=1_000 + offset, board_time_s=1_002 + offset,
                        g_us=g, temperature_c=24.5)  # fmt: skip
    return np.asarray(OFFSETS_S)


def _fit(n: int) -> DriftFit:
    rng = np.random.default_rng(5)
    g0_us, nu = rng.uniform(2, 25, n), rng.uniform(0.02, 0.08, n)
    g0_us[:3] = 0.0  # RESET devices: no signal, no ν
    t_s = np.asarray(OFFSETS_S)
    return fit_drift(g0_us[None, :] * (t_s[:, None] / 25.0) ** -nu[None, :], t_s)


def test_a_fit_round_trips_every_vector_with_its_status_and_statistics(
    engine: Engine, programmed_run: tuple[int, ProgrammingResult], device_map: DeviceMap
) -> None:
    run, _ = programmed_run
    fit = _fit(device_map.n_devices)
    t_s = np.asarray(OFFSETS_S)
    stats = chip_statistics(fit, device_map.target_g_us, t_s).to_dict()
    with engine.begin() as conn:
        fit_id = save_device_fit(conn, run, fit, statistics=stats, extra_summary={"n_readouts": 4})
    with engine.connect() as conn:
        stored = load_device_fit(conn, fit_id)
    assert (stored.run_id, stored.t0_s, stored.n_devices) == (run, fit.t0_s, fit.n_devices)
    np.testing.assert_array_equal(stored.nu, fit.nu.astype(np.float32))  # NaN where unfitted, too
    np.testing.assert_array_equal(stored.g_t0_us, fit.g_t0_us.astype(np.float32))
    np.testing.assert_array_equal(stored.r_squared, fit.r_squared.astype(np.float32))
    np.testing.assert_array_equal(stored.status, fit.status)
    np.testing.assert_array_equal(stored.ok, fit.ok)
    assert stored.statistics == stats
    assert stored.bins == stats["bins"] and stored.bins
    assert stored.summary["n_readouts"] == 4
    assert stored.summary["n_fitted"] == int(fit.ok.sum()) == fit.n_devices - 3
    assert stored.summary["status_counts"]["no_signal"] == 3
    assert stored.summary["nu_median"] == pytest.approx(float(np.median(fit.nu[fit.ok])), abs=1e-6)


def test_the_latest_fit_of_a_run_is_the_current_one(
    engine: Engine, programmed_run: tuple[int, ProgrammingResult], device_map: DeviceMap
) -> None:
    run, _ = programmed_run
    fit = _fit(device_map.n_devices)
    with engine.begin() as conn:
        save_device_fit(conn, run, fit, extra_summary={"n_readouts": 3})
        newest = save_device_fit(conn, run, fit, extra_summary={"n_readouts": 4})
    with engine.connect() as conn:
        latest = latest_device_fit(conn, run)
    assert latest.id == newest and latest.summary["n_readouts"] == 4
    assert latest.statistics is None and latest.bins == []


def test_a_run_without_a_fit_is_not_found(
    engine: Engine, programmed_run: tuple[int, ProgrammingResult]
) -> None:
    with (
        engine.connect() as conn,
        pytest.raises(NotFoundError, match=f"run {programmed_run[0]} has no drift fit"),
    ):
        latest_device_fit(conn, programmed_run[0])
    with engine.connect() as conn, pytest.raises(NotFoundError, match="drift fit 99 does not exist"):
        load_device_fit(conn, 99)


def test_a_corrupted_fit_vector_is_detected_not_returned(
    engine: Engine, programmed_run: tuple[int, ProgrammingResult], device_map: DeviceMap
) -> None:
    with engine.begin() as conn:
        fit_id = save_device_fit(conn, programmed_run[0], _fit(device_map.n_devices))
        conn.execute(update(device_fits).values(status_crc32=device_fits.c.status_crc32 + 1))
    with engine.connect() as conn, pytest.raises(CorruptVectorError, match=f"drift fit {fit_id} status"):
        load_device_fit(conn, fit_id)


def test_caller_summary_cannot_overwrite_the_fits_own_numbers(
    engine: Engine, programmed_run: tuple[int, ProgrammingResult], device_map: DeviceMap
) -> None:
    with engine.begin() as conn, pytest.raises(StoreError, match="n_fitted"):
        save_device_fit(conn, programmed_run[0], _fit(device_map.n_devices), extra_summary={"n_fitted": 1})


def test_a_fit_stored_before_revision_0002_survives_the_upgrade_with_status_unknown(
    database_url: str, device_map: DeviceMap
) -> None:
    engine = make_engine(database_url)
    upgrade(engine, "0001")
    fit = _fit(device_map.n_devices)
    with engine.begin() as conn:
        station = records.add_station(conn, "old", resource="sim://", chip_serial="SIM", geometry=GEOMETRY,
                                      amplitude_limit_ua=500.0)  # fmt: skip
        network = records.add_network(conn, "old", architecture="mlp", checkpoint=b"old")
        mapping = records.add_mapping(conn, network_id=network, station_id=station, device_map=b"-",
                                      n_devices=device_map.n_devices, utilisation=0.1)  # fmt: skip
        run = start_programming_run(conn, mapping, {})
        old_columns = {"run_id": run, "summary": {"n_readouts": 4}}
        for name, values in (("nu", fit.nu), ("g_t0", fit.g_t0_us), ("r2", fit.r_squared)):
            old_columns |= encode(values, "float32").columns(name)
        fit_id = conn.execute(
            insert(device_fits).values(**old_columns).returning(device_fits.c.id)
        ).scalar_one()
    upgrade(engine)
    with engine.connect() as conn:
        stored = latest_device_fit(conn, run)
    assert stored.id == fit_id and stored.status is None and stored.t0_s is None and stored.statistics is None
    assert stored.summary == {"n_readouts": 4}
    np.testing.assert_array_equal(stored.ok, fit.status == FitStatus.OK)  # from ν being finite
    downgrade(engine, "0001")
    assert current_revision(engine) == "0001"
    engine.dispose()


def test_readouts_of_a_run_are_listed_in_schedule_order_with_their_times(
    engine: Engine, programmed_run: tuple[int, ProgrammingResult], device_map: DeviceMap
) -> None:
    run, _ = programmed_run
    n = device_map.n_devices
    _drifted_readouts(engine, run, np.full(n, 10.0), np.full(n, 0.05))
    with engine.connect() as conn:
        listed = list_readouts(conn, run)
    assert [r.offset_s for r in listed] == list(OFFSETS_S)
    assert [r.board_time_s for r in listed] == [1_002 + o for o in OFFSETS_S]
    assert [r.scheduled_s for r in listed] == [1_000 + o for o in OFFSETS_S]
    assert {(r.run_id, r.n_devices, r.temperature_c) for r in listed} == {(run, n, 24.5)}


def test_evaluations_of_an_experiment_are_listed_in_readout_time_order_across_its_runs(
    engine: Engine,
    programmed_run: tuple[int, ProgrammingResult],
    device_map: DeviceMap,
    station_ids: list[int],
) -> None:
    run, _ = programmed_run
    n = device_map.n_devices
    with engine.begin() as conn:
        network = records.add_network(conn, "other", architecture="mlp", checkpoint=b"other")
        experiment = records.add_experiment(conn, "drift", network_id=network, station_id=station_ids[0],
                                            settings={})  # fmt: skip
        conn.execute(
            update(programming_runs).where(programming_runs.c.id == run).values(experiment_id=experiment)
        )
        mapping = conn.execute(programming_runs.select().where(programming_runs.c.id == run)).one().mapping_id
        unrelated = start_programming_run(conn, mapping, {})  # not the experiment's: not listed
    _drifted_readouts(engine, run, np.full(n, 10.0), np.full(n, 0.05))
    _drifted_readouts(engine, unrelated, np.full(n, 10.0), np.full(n, 0.05))
    with engine.begin() as conn:
        for readout in list_readouts(conn, run)[::-1]:
            for method, accuracy in (("gdc", 0.9), ("none", 0.8)):
                records.add_evaluation(
                    conn, readout.id, method=method, accuracy=accuracy - readout.offset_s * 1e-6,
                    n_images=100, ci=(0.7, 0.95), settings={"dataset": "digits"},
                )  # fmt: skip
        for readout in list_readouts(conn, unrelated):
            records.add_evaluation(conn, readout.id, method="none", accuracy=0.1, n_images=10)
    with engine.connect() as conn:
        listed = records.list_evaluations(conn, experiment)
        only_gdc = records.list_evaluations(conn, experiment, method="gdc")
    assert [(e.offset_s, e.method) for e in listed] == [(o, m) for o in OFFSETS_S for m in ("gdc", "none")]
    assert {e.run_id for e in listed} == {run}
    assert listed[0].board_time_s == 1_002 + OFFSETS_S[0] and listed[0].ci_low == 0.7
    assert listed[-1].accuracy == pytest.approx(0.8 - OFFSETS_S[-1] * 1e-6)
    assert listed[0].settings == {"dataset": "digits"}
    assert [e.offset_s for e in only_gdc] == list(OFFSETS_S)

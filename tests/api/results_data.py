"""A small campaign's rows written through the store, as the worker would leave them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sqlalchemy import Engine

from drivers.base import Geometry
from hwctl.analysis.drift import fit_drift
from hwctl.analysis.statistics import chip_statistics
from hwctl.experiment_spec import ExperimentSpec
from hwctl.mapping import DeviceMap, LayerWeights, map_network
from hwctl.store import readouts, records
from hwctl.store.fits import save_device_fit

GEOMETRY = Geometry(tiles=1, rows=16, cols=16)
OFFSETS_S = (25.0, 250.0, 2500.0)
PROGRAMMED_AT_S = 1000.0


@dataclass(frozen=True)
class Campaign:
    experiment_id: int
    run_id: int
    readout_ids: list[int]
    g_us: list[np.ndarray]
    device_map: DeviceMap
    programmed_s: np.ndarray
    fit_id: int
    dead_device: int  # programmed to a non-zero target, never read above 0


def write_campaign(engine: Engine, seed: int = 0) -> Campaign:
    """Station, network, experiment, mapping, finished run, three readouts, evaluations, a fit."""
    rng = np.random.default_rng(seed)
    layer = LayerWeights("fc", rng.normal(size=(6, 4)).astype(np.float32))
    device_map = map_network([layer], GEOMETRY)
    n = device_map.n_devices
    programmed_s = PROGRAMMED_AT_S + np.arange(n, dtype=np.float64)
    spec = ExperimentSpec.model_validate(
        {"network_id": 1, "station": "bench", "schedule": {"offsets_s": list(OFFSETS_S)}}
    )
    with engine.begin() as conn:
        station_id = records.add_station(
            conn, "bench", resource="sim://", chip_serial="SIM-0001", geometry=GEOMETRY,
            amplitude_limit_ua=500.0,
        )
        network_id = records.add_network(conn, "fc", architecture="digits-resnet", checkpoint=b"x")
        experiment_id = records.add_experiment(
            conn, "fc on bench", network_id=network_id, station_id=station_id,
            settings=spec.model_copy(update={"network_id": network_id}).model_dump(mode="json"),
        )
        mapping_id = records.add_mapping(
            conn, network_id=network_id, station_id=station_id, device_map=device_map.to_bytes(),
            n_devices=n, utilisation=0.5, experiment_id=experiment_id,
        )
        run_id = readouts.start_programming_run(conn, mapping_id, {}, experiment_id)
        readouts.finish_programming_run(conn, run_id, readouts.ProgrammingResult(
            addresses=device_map.addresses, target_g_us=device_map.target_g_us,
            g_final_us=device_map.target_g_us.astype(np.float32), iterations=np.ones(n, np.int32),
            status=np.zeros(n, np.uint8), programmed_s=programmed_s,
        ))
        dead = int(np.flatnonzero(device_map.target_g_us > 5.0)[0])
        g_us, readout_ids = [], []
        for k, offset_s in enumerate(OFFSETS_S):
            g = (device_map.target_g_us * (1.0 - 0.05 * k)).astype(np.float32)
            g[dead] = 0.0
            board_s = PROGRAMMED_AT_S + n + offset_s
            readout_ids.append(readouts.add_readout(
                conn, run_id, offset_s=offset_s, scheduled_s=board_s, board_time_s=board_s, g_us=g
            ))
            g_us.append(g)
            for method, accuracy in (("none", 90.0 - 5 * k), ("gdc", 91.0 - k)):
                records.add_evaluation(conn, readout_ids[-1], method=method, accuracy=accuracy, n_images=100,
                                       ci=(accuracy - 2, accuracy + 2))
        # What the analyze job stores: real fits and statistics of these readouts.
        t_s = np.asarray(OFFSETS_S)[:, None] + n - np.arange(n)[None, :]
        fit = fit_drift(np.stack(g_us), t_s)
        statistics = chip_statistics(fit, device_map.target_g_us, t_s).to_dict()
        fit_id = save_device_fit(conn, run_id, fit, statistics=statistics, extra_summary={"n_readouts": 3})
    return Campaign(experiment_id, run_id, readout_ids, g_us, device_map, programmed_s, fit_id, dead)

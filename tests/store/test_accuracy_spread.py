"""An experiment programmed twice, each programming read three times at each point: its
accuracy per time and method is the mean over both programmings, with the spread over the
reads (pooled) and over the programmings apart; a run still programming does not count."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import Connection, Engine

from hwctl.analysis.stored import measured_accuracy
from hwctl.experiment_spec import ExperimentSpec, ScheduleSpec
from hwctl.mapping import DeviceMap
from hwctl.store import records
from hwctl.store.readouts import ProgrammingResult, add_readout, finish_programming_run, start_programming_run

OFFSETS_S = (25.0, 3_600.0)
# Accuracy of (programming, offset) per draw: programmings differ by ~10 points, draws by ~1.
ACCURACY = {
    (0, 25.0): (90.0, 91.0, 92.0), (0, 3_600.0): (80.0, 82.0, 84.0),
    (1, 25.0): (70.0, 71.0, 72.0), (1, 3_600.0): (60.0, 60.5, 61.0),
}  # fmt: skip


def _programmed(conn: Connection, mapping: int, experiment: int, device_map: DeviceMap, end_s: float) -> int:
    n = device_map.n_devices
    run = start_programming_run(conn, mapping, {}, experiment)
    finish_programming_run(conn, run, ProgrammingResult(
        addresses=device_map.addresses, target_g_us=device_map.target_g_us,
        g_final_us=device_map.target_g_us.astype(np.float32), iterations=np.ones(n, np.int32),
        status=np.zeros(n, np.uint8), programmed_s=np.full(n, end_s),
    ))  # fmt: skip
    return run


def test_two_programmings_of_three_reads_each_give_the_mean_and_both_spreads(
    engine: Engine, station_ids: list[int], device_map: DeviceMap
) -> None:
    n = device_map.n_devices
    with engine.begin() as conn:
        network = records.add_network(conn, "tiny", architecture="digits-resnet", checkpoint=b"x")
        schedule = ScheduleSpec(offsets_s=list(OFFSETS_S), reads_per_point=3)
        spec = ExperimentSpec(network_id=network, station="station-0", schedule=schedule)
        experiment = records.add_experiment(conn, "twice", network_id=network, station_id=station_ids[0],
                                            settings=spec.model_dump(mode="json"))  # fmt: skip
        mapping = records.add_mapping(conn, network_id=network, station_id=station_ids[0],
                                      device_map=device_map.to_bytes(), n_devices=n, utilisation=0.1,
                                      experiment_id=experiment)  # fmt: skip
        for programming, end_s in enumerate((1_000.0, 500_000.0)):
            run = _programmed(conn, mapping, experiment, device_map, end_s)
            for offset_s in OFFSETS_S:
                for draw, accuracy in enumerate(ACCURACY[programming, offset_s]):
                    read_s = end_s + offset_s + 2.0 * draw  # each draw a whole read after the last
                    readout = add_readout(conn, run, offset_s=offset_s, scheduled_s=end_s + offset_s,
                                          board_time_s=read_s, g_us=np.ones(n), draw=draw)  # fmt: skip
                    records.add_evaluation(conn, readout, method="gdc", accuracy=accuracy, n_images=100,
                                           ci=(accuracy - 3, accuracy + 3))  # fmt: skip
        unfinished = start_programming_run(conn, mapping, {}, experiment)  # programming now: not counted
        add_readout(conn, unfinished, offset_s=25.0, scheduled_s=0.0, board_time_s=0.0, g_us=np.ones(n))

    with engine.connect() as conn:
        points = measured_accuracy(conn, experiment)

    assert [(p.point_s, p.method, p.n_draws, p.n_programmings) for p in points] == [
        (25.0, "gdc", 6, 2), (3_600.0, "gdc", 6, 2),
    ]  # fmt: skip
    for point in points:
        reads = [np.array(ACCURACY[k, point.point_s]) for k in (0, 1)]
        means = [r.mean() for r in reads]
        assert point.accuracy == pytest.approx(np.mean(means))
        assert point.programming_std == pytest.approx(np.std(means, ddof=1))
        pooled = np.sqrt(sum(((r - r.mean()) ** 2).sum() for r in reads) / (2 * (3 - 1)))
        assert point.draw_std == pytest.approx(pooled)
        assert point.t_s == pytest.approx(point.point_s + 2.0)  # the draws' mean read time since programming
        assert (point.ci_low, point.ci_high) == (
            pytest.approx(point.accuracy - 3),
            pytest.approx(point.accuracy + 3),
        )

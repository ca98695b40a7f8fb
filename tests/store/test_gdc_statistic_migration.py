"""Revision 0010: settings stored before the GDC statistic was configurable say `column-sum`,
the statistic they were run with; downgrade removes the key again (on both databases)."""

from __future__ import annotations

from typing import Any

import numpy as np
from sqlalchemy import Engine, Table, select

from hwctl.store import records
from hwctl.store.inferences import add_inference
from hwctl.store.migrate import downgrade, upgrade
from hwctl.store.readouts import ProgrammingResult, add_readout
from hwctl.store.schema import evaluations, experiments, inferences

DIGITS_DATASET = 1  # built in by revision 0007


def _settings(engine: Engine, table: Table, row_id: int) -> dict[str, Any]:
    with engine.connect() as conn:
        return dict(conn.execute(select(table.c.settings).where(table.c.id == row_id)).scalar_one())


def test_rows_stored_before_the_statistic_name_column_sum_and_downgrade_removes_it(
    engine: Engine, station_ids: list[int], programmed_run: tuple[int, ProgrammingResult]
) -> None:
    run, result = programmed_run
    named = {"gdc_statistic": "abs-weights"}
    with engine.begin() as conn:
        network = records.add_network(conn, "net", architecture="mlp", checkpoint=b"w")
        experiment = records.add_experiment(
            conn, "named", network_id=network, station_id=station_ids[0],
            settings={"network_id": network, "evaluation": {"methods": ["gdc"], **named}},
        )  # fmt: skip
        readout = add_readout(conn, run, offset_s=25.0, scheduled_s=2_000.0, board_time_s=2_000.0,
                              g_us=np.asarray(result.g_final_us))  # fmt: skip
        evaluation = records.add_evaluation(conn, readout, method="gdc", accuracy=90.0, n_images=10,
                                            settings={"dataset": "digits", **named})  # fmt: skip
        inference = add_inference(conn, experiment, DIGITS_DATASET, readout,
                                  {"dataset_id": DIGITS_DATASET, "at": readout, **named})  # fmt: skip

    downgrade(engine, "0009")
    assert _settings(engine, experiments, experiment)["evaluation"] == {"methods": ["gdc"]}
    assert _settings(engine, evaluations, evaluation) == {"dataset": "digits"}
    assert _settings(engine, inferences, inference) == {"dataset_id": DIGITS_DATASET, "at": readout}
    with engine.begin() as conn:  # a row that names one before the upgrade keeps it
        kept = records.add_experiment(
            conn, "kept", network_id=network, station_id=station_ids[1],
            settings={"evaluation": {"gdc_statistic": "calibration-batch"}},
        )  # fmt: skip

    upgrade(engine)
    assert _settings(engine, experiments, experiment)["evaluation"]["gdc_statistic"] == "column-sum"
    assert _settings(engine, experiments, kept)["evaluation"]["gdc_statistic"] == "calibration-batch"
    assert _settings(engine, evaluations, evaluation)["gdc_statistic"] == "column-sum"
    assert _settings(engine, inferences, inference)["gdc_statistic"] == "column-sum"

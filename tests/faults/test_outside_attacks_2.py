"""Faults a lab does to the service from outside that the campaign scenarios do not place:
processes started twice, and the like. Each test runs the lab's own processes
(`tests.faults.lab`) and judges what the store and the board say afterwards."""

from __future__ import annotations

import subprocess

import pytest

from tests.faults.lab import STARTUP_S, Lab, worker_child
from tests.faults.scenarios import CI_SCALE

pytestmark = [pytest.mark.faults, pytest.mark.timeout(240)]


def test_a_second_worker_for_a_station_is_refused_and_the_first_keeps_the_board(sqlite_lab: Lab) -> None:
    """Both would drive the board: the second's recovery queued the first's running job
    again, both claimed jobs and moved the virtual clock, and a campaign ended 'done'
    with four of six readbacks missed. A worker killed -9 leaves the station free."""
    bench = sqlite_lab.bench("twin", clock="virtual", watchdog_s=1.5, state=True, worker=CI_SCALE.worker)
    with bench:
        bench.worker.wait_for_log(r"board checked", STARTUP_S)
        second = worker_child(bench.directory, sqlite_lab.database_url, "twin", CI_SCALE.worker)
        second.log_path = bench.directory / "second-worker.log"
        second.start()
        try:
            assert second.process is not None
            code = second.process.wait(STARTUP_S)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            second.kill()
        assert code not in (0, None), second.log_text()[-2000:]
        assert "already has a worker" in second.log_text()
        assert "board checked" not in second.log_text()
        assert bench.worker.alive

        bench.worker.kill()
        after = bench.worker.log_path.stat().st_size
        bench.worker.start()
        bench.worker.wait_for_log(r"board checked", STARTUP_S, after)

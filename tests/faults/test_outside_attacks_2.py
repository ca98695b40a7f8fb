"""Faults a lab does to the service from outside that the campaign scenarios do not place:
processes started twice, and the like. Each test runs the lab's own processes
(`tests.faults.lab`) and judges what the store and the board say afterwards."""

from __future__ import annotations

import sqlite3
import subprocess
import time
from dataclasses import replace

import pytest

from tests.faults.audit import audit_campaign, settled
from tests.faults.lab import STARTUP_S, Lab, wait_until, worker_child
from tests.faults.scenarios import CI_SCALE, SCENARIOS, Run

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


def test_a_worker_stopped_while_the_database_is_locked_leaves_the_board_safe_and_exits_0(
    sqlite_lab: Lab,
) -> None:
    """SIGTERM while another process holds SQLite's write lock (a backup, a `sqlite3` shell)
    mid-programming: the stop's grace ran out while the chip lane waited for the lock, the
    link was aborted (the board left to a watchdog that here takes 10 minutes) and the
    worker exited 1 with the lock's traceback. The programming resumes at the next start."""
    # A short busy timeout: the lock's wait ends (and the stop with it) in 2 s, not 10.
    scale = replace(CI_SCALE.worker, settings=(*CI_SCALE.worker.settings, ("sqlite_busy_timeout_ms", 2000)))
    bench = sqlite_lab.bench("locked", clock="virtual", watchdog_s=600, state=True, worker=scale)
    with bench:
        experiment_id = bench.submit(list(CI_SCALE.offsets_s))
        run = Run(SCENARIOS["worker_kill_programming"], sqlite_lab, bench, CI_SCALE)
        run.experiment_id = experiment_id
        wait_until(run.in_phase, "the programming to run", STARTUP_S, poll_s=0.005)
        lock = sqlite3.connect(sqlite_lab.database_url.removeprefix("sqlite:///"), isolation_level=None)
        try:
            lock.execute("BEGIN EXCLUSIVE")
            time.sleep(1.0)  # the chip lane's next checkpoint waits for the lock
            code = bench.worker.stop(timeout_s=60)
            safe = bench.chip.probe.is_safe()
        finally:
            lock.close()
        assert code == 0, bench.worker.log_text()[-3000:]
        assert safe, "the worker left the board to its watchdog"
        bench.worker.start()
        wait_until(
            lambda: settled(sqlite_lab.engine, experiment_id), "the campaign to settle", 120, poll_s=0.2
        )
        audit = audit_campaign(sqlite_lab.engine, experiment_id, bench.chip.probe)
        assert audit.experiment_status == "done" and audit.programming_runs == 1, audit.figures()
        assert not audit.lost and not audit.duplicated and not audit.failed_jobs, audit.figures()

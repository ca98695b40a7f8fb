"""A campaign survives the lab (issue 9): whole campaigns over real TCP, each with one fault.

The lab runs as a lab runs it: `hwctl sim-chip` (with `--state` unless said otherwise),
`hwctl serve --no-embedded` and `hwctl worker` as processes, the station's resource
pointing at a proxy the test cuts. Each campaign is submitted through the API, the fault
lands mid-programming or mid-readback, and the campaign must end as the issue says, on
its own: every scheduled readout once (none lost, none doubled), no readout that
disagrees with what the chip holds left unflagged, the board safe within its watchdog
period and after the worker stops, the API answering without 5xx once the fault is over.
The scenarios and their verdicts live in `tests.faults.scenarios` (the faults benchmark
runs the same ones at the issue's scale).
"""

from __future__ import annotations

import json

import pytest

from tests.faults.lab import Lab
from tests.faults.scenarios import CI_SCALE, SCENARIOS, ScenarioResult, run_scenario

pytestmark = [pytest.mark.faults, pytest.mark.timeout(240)]


def survived(name: str, lab: Lab) -> ScenarioResult:
    """Run the scenario; a failure prints every broken expectation with the logs that explain it."""
    result = run_scenario(SCENARIOS[name], lab, CI_SCALE)
    report = json.dumps(result.figures(), indent=1, default=str)
    assert result.problems == [], report
    assert result.recovered, report
    return result


def test_a_link_cut_mid_programming_resumes_the_run_and_the_campaign_completes(sqlite_lab: Lab) -> None:
    result = survived("link_drop_programming", sqlite_lab)
    assert result.attempts["program"] == 2 and result.lost == result.duplicated == 0


def test_a_link_cut_mid_readback_resumes_the_readout_and_the_campaign_completes(sqlite_lab: Lab) -> None:
    result = survived("link_drop_readback", sqlite_lab)
    assert result.attempts["readback@100s"] == 2 and result.lost == result.duplicated == 0


def test_a_board_killed_and_restarted_with_its_state_file_gives_continuous_data(sqlite_lab: Lab) -> None:
    result = survived("board_restart_with_state", sqlite_lab)
    assert result.experiment_status == "done" and result.flagged == 0


def test_a_board_back_blank_flags_the_experiment_within_one_readback_never_done(sqlite_lab: Lab) -> None:
    result = survived("board_restart_without_state", sqlite_lab)
    assert result.experiment_status == "board_state_lost" and result.status_reason
    assert result.flagged  # at least the readout the restart cut in two


def test_a_link_that_resets_again_and_again_during_one_readback_loses_no_readout(sqlite_lab: Lab) -> None:
    """Six cuts, each after progress: the readback goes on within its window (issue 9: an
    interrupted readback continues from its checkpoint within its window, else is missed)."""
    result = survived("link_flapping_readback", sqlite_lab)
    assert result.attempts["readback@100s"] > 5 and result.lost == 0


def test_a_worker_killed_and_restarted_resumes_the_readout_and_the_board_went_safe(sqlite_lab: Lab) -> None:
    result = survived("worker_kill", sqlite_lab)
    assert result.observed["safe_within_watchdog"] is True


@pytest.mark.postgres
def test_a_postgresql_restart_mid_readback_loses_nothing_and_the_api_answers_once_back(
    postgres_lab: Lab,
) -> None:
    result = survived("postgres_restart", postgres_lab)
    assert result.lost == result.duplicated == 0

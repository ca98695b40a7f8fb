"""Host-side program-and-verify against the in-process simulated board."""

from __future__ import annotations

import numpy as np
import pytest

from drivers.base import Geometry
from drivers.errors import LimitError
from drivers.sim.board import SimBoard
from hwctl.program_verify import DeviceStatus, ProgramSettings, ResumePoint, program_and_verify


class CountingBoard(SimBoard):
    """Records every command so the per-iteration command budget can be checked."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(Geometry(1, 1, 5_000), seed=2)
        self.log: list[str] = []

    def reset(self, addresses: np.ndarray) -> None:
        self.log.append("reset")
        super().reset(addresses)

    def set_pulse(self, addresses: np.ndarray, amplitudes_ua: np.ndarray) -> None:
        self.log.append("set")
        super().set_pulse(addresses, amplitudes_ua)

    def read_block(self, addresses: np.ndarray) -> np.ndarray:
        self.log.append("read")
        return super().read_block(addresses)


def _targets(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.0, 25.0, n).astype(np.float32)


def test_each_iteration_sends_at_most_one_reset_one_set_and_one_read() -> None:
    board = CountingBoard()
    calls: list[tuple[int, int, int]] = []
    result = program_and_verify(
        board, np.arange(5_000, dtype=np.uint32), _targets(5_000), progress=lambda *a: calls.append(a)
    )
    assert board.log.count("read") == len(calls) == int(result.iterations.max())
    iterations = " ".join(board.log).split("read")[:-1]
    for commands in iterations:
        assert commands.split().count("reset") <= 1 and commands.split().count("set") <= 1
    assert [c[0] for c in calls] == list(range(1, len(calls) + 1))
    assert all(active + done == 5_000 for _, active, done in calls)


def test_zero_targets_are_reset_and_verified_without_set_pulses() -> None:
    board = CountingBoard()
    result = program_and_verify(board, np.arange(100, dtype=np.uint32), np.zeros(100, np.float32))
    assert "set" not in board.log
    assert np.all(result.g_final_us < 0.5)
    assert result.converged_fraction_nonzero == 1.0


def test_amplitude_above_the_board_limit_is_refused_before_any_pulse() -> None:
    board = CountingBoard()
    board.set_amplitude_limit_ua(120.0)
    with pytest.raises(LimitError, match="120"):
        program_and_verify(board, np.arange(10, dtype=np.uint32), _targets(10))
    assert board.log == []


def test_result_records_board_time_of_each_devices_last_pulse() -> None:
    board = CountingBoard()
    n = 2_000
    result = program_and_verify(
        board, np.arange(n, dtype=np.uint32), _targets(n), progress=lambda *_: board.clock.advance(1.0)
    )
    # Iteration k pulses at board time k-1; a device's last pulse is in its last iteration.
    np.testing.assert_array_equal(result.programmed_s, result.iterations - 1.0)
    np.testing.assert_array_equal(result.programmed_s, board.array.t_programmed_s[:n])


def test_devices_the_max_amplitude_cannot_reach_are_reported_at_the_limit() -> None:
    board = CountingBoard()
    settings = ProgramSettings(amplitude_max_ua=100.0, g_at_amplitude_max_us=12.0)
    targets = np.full(500, 24.0, np.float32)
    result = program_and_verify(board, np.arange(500, dtype=np.uint32), targets, settings)
    assert result.count(DeviceStatus.LIMIT) > 450
    assert result.converged_fraction_nonzero < 0.1


def test_malformed_targets_are_rejected() -> None:
    board = CountingBoard()
    with pytest.raises(ValueError):
        program_and_verify(board, np.arange(3, dtype=np.uint32), np.array([1.0, -1.0, 2.0], np.float32))


class Interrupted(Exception):
    pass


def test_an_interrupted_programming_resumes_leaving_devices_within_tolerance_alone() -> None:
    board = CountingBoard()
    addresses, targets = np.arange(5_000, dtype=np.uint32), _targets(5_000)

    def link_lost_after_iteration_2(iteration: int, remaining: int, converged: int) -> None:
        if iteration == 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        program_and_verify(board, addresses, targets, progress=link_lost_after_iteration_2)
    g_now_us = board.read_block(addresses)
    settings = ProgramSettings()
    within = np.abs(g_now_us - targets) <= settings.tolerance_us + settings.tolerance_rel * targets
    assert 0 < within.sum() < within.size
    resumed_at_s = board.board_time_s()
    pulsed: list[np.ndarray] = []
    reset, set_pulse = board.reset, board.set_pulse
    board.reset = lambda a: (pulsed.append(a.copy()), reset(a))[1]  # type: ignore[method-assign]
    board.set_pulse = lambda a, i: (pulsed.append(a.copy()), set_pulse(a, i))[1]  # type: ignore[method-assign]

    result = program_and_verify(board, addresses, targets, resume=ResumePoint(g_now_us, resumed_at_s))

    assert not np.isin(addresses[within], np.concatenate(pulsed)).any()  # never pulsed again
    assert np.all(result.status[within] == DeviceStatus.CONVERGED)
    assert np.all(result.iterations[within] == 0) and np.all(result.programmed_s[within] == resumed_at_s)
    np.testing.assert_array_equal(result.g_final_us[within], g_now_us[within])
    assert result.converged_fraction_nonzero >= 0.99


def test_a_large_set_is_programmed_block_by_block_each_with_its_own_loop() -> None:
    board = CountingBoard()
    addresses, targets = np.arange(5_000, dtype=np.uint32), _targets(5_000, seed=3)
    sent: list[np.ndarray] = []
    read_block = board.read_block
    board.read_block = lambda a: (sent.append(a.copy()), read_block(a))[1]  # type: ignore[method-assign]
    calls: list[tuple[int, int, int]] = []
    result = program_and_verify(
        board, addresses, targets, progress=lambda *a: calls.append(a), block_devices=2_000
    )
    blocks = [(0, 2_000), (2_000, 4_000), (4_000, 5_000)]
    first_reads = [a for a in sent if a.size in (2_000, 1_000)][:3]
    assert [(int(a.min()), int(a.max()) + 1) for a in first_reads] == blocks  # each block's loop stays in it
    assert all(np.isin(a, addresses[lo:hi]).all() for a in sent for lo, hi in blocks if lo <= a.min() < hi)
    assert all(active + done == 5_000 for _, active, done in calls)
    assert calls[-1][2] >= 4_900  # converged counts over every block
    assert result.converged_fraction_nonzero >= 0.99
    assert np.all(result.iterations >= 1)

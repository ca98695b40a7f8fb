"""A simulated chip with a state file is non-volatile; without one it forgets on power loss.

What a real PCM chip does across a power cycle (devices keep their conductance, the
board clock runs on), what the volatile simulator does instead (blank, clock at 0), and
that a `hwctl sim-chip --state` killed with SIGKILL in the middle of programming leaves a
file whose every chunk of devices is wholly before or wholly after the pulse.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from drivers.base import Geometry
from drivers.chip import ChipDriver
from drivers.errors import DriverError
from drivers.pcm_model import PCMModel
from drivers.sim.board import SimBoard
from drivers.sim.clock import AcceleratedClock, VirtualClock
from drivers.sim.state import (
    BYTES_PER_DEVICE,
    CHUNK_DEVICES,
    FIELDS,
    UNSETTLED,
    MemoryStore,
    StateFileError,
    committed_devices,
    file_bytes,
    read_metadata,
)
from drivers.transports.factory import open_transport

GEOMETRY = Geometry(1, 64, 1024)
ALL = np.arange(GEOMETRY.n_devices, dtype=np.uint32)


def _programmed(board: SimBoard) -> None:
    board.reset(ALL)
    amplitudes = np.random.default_rng(0).uniform(70.0, 200.0, ALL.size).astype(np.float32)
    board.set_pulse(ALL, amplitudes)
    board.clock.advance(600.0)


def test_per_device_state_fits_in_32_bytes_also_for_a_50m_device_chip() -> None:
    board = SimBoard(Geometry(1, 4, 8))
    arrays = board.array.store.arrays
    assert set(arrays) == set(FIELDS)
    assert sum(a.itemsize for a in arrays.values()) == BYTES_PER_DEVICE <= 32
    n = Geometry(48, 512, 2048).n_devices
    assert file_bytes(n) <= 32 * n  # the state file, journal and header included


def test_a_restarted_chip_has_its_devices_as_they_were_and_its_clock_continues(tmp_path: Path) -> None:
    path = tmp_path / "chip.state"
    board = SimBoard(GEOMETRY, seed=4, state_path=path)
    _programmed(board)
    conductance_us = board.array.conductance_us(ALL)
    t_programmed_s = np.array(board.array.t_programmed_s)
    board.close()

    again = SimBoard(GEOMETRY, clock=VirtualClock(), seed=4, state_path=path)
    assert again.board_time_s() == 600.0
    np.testing.assert_array_equal(again.array.conductance_us(ALL), conductance_us)
    np.testing.assert_array_equal(again.array.t_programmed_s, t_programmed_s)
    again.clock.advance(3000.0)
    bright = conductance_us > 5.0
    assert np.median(again.read_block(ALL)[bright] / conductance_us[bright]) < 0.95  # it drifts on


def test_a_restarted_real_time_chip_counts_the_time_it_was_off(tmp_path: Path) -> None:
    path = tmp_path / "chip.state"
    SimBoard(GEOMETRY, clock=AcceleratedClock(rate=1000.0), state_path=path).close()
    time.sleep(0.05)
    again = SimBoard(GEOMETRY, clock=AcceleratedClock(rate=1000.0), state_path=path)
    assert again.board_time_s() >= 50.0


def test_without_a_state_file_a_power_cycle_comes_back_blank_with_its_clock_at_zero() -> None:
    board = SimBoard(GEOMETRY, seed=4)
    _programmed(board)
    board.power_cycle()
    assert board.board_time_s() == 0.0
    assert not board.array.g_state_us.any()
    assert np.median(board.read_block(ALL)) < 0.05


def test_with_a_state_file_a_power_cycle_keeps_devices_and_clock(tmp_path: Path) -> None:
    board = SimBoard(GEOMETRY, seed=4, state_path=tmp_path / "chip.state")
    _programmed(board)
    before = board.array.conductance_us(ALL)
    board.set_amplitude_limit_ua(150.0)
    board.power_cycle()
    assert board.board_time_s() == 600.0
    assert board.amplitude_limit_ua() == board.max_amplitude_ua()  # settings are volatile
    np.testing.assert_array_equal(board.array.conductance_us(ALL), before)


def test_a_state_file_of_another_chip_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "chip.state"
    SimBoard(GEOMETRY, seed=4, state_path=path).close()
    with pytest.raises(StateFileError, match="geometry"):
        SimBoard(Geometry(1, 64, 512), seed=4, state_path=path)
    with pytest.raises(StateFileError, match="seed"):
        SimBoard(GEOMETRY, seed=5, state_path=path)
    with pytest.raises(StateFileError, match="model"):
        SimBoard(GEOMETRY, model=PCMModel(t0_s=20.0), seed=4, state_path=path)
    in_use = SimBoard(GEOMETRY, seed=4, state_path=path)
    with pytest.raises(StateFileError, match="in use"):
        SimBoard(GEOMETRY, seed=4, state_path=path)
    in_use.close()
    (tmp_path / "other").write_bytes(b"not a chip")
    with pytest.raises(StateFileError, match="not a simulated-chip state file"):
        SimBoard(GEOMETRY, seed=4, state_path=tmp_path / "other")


def test_a_committed_chunk_that_died_before_landing_is_applied_at_power_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The process dies between the journal's commit word and the scatter into the arrays."""
    path = tmp_path / "chip.state"
    board = SimBoard(GEOMETRY, seed=4, state_path=path)
    board.reset(ALL)
    replica = SimBoard(GEOMETRY, seed=4)
    replica.reset(ALL)
    amplitudes = np.full(1000, 150.0, np.float32)
    replica.set_pulse(ALL[:1000], amplitudes)

    def power_lost(*args: object) -> None:
        raise KeyboardInterrupt("power lost")

    monkeypatch.setattr(MemoryStore, "apply", power_lost)
    with pytest.raises(KeyboardInterrupt):
        board.set_pulse(ALL[:1000], amplitudes)
    monkeypatch.undo()
    assert not np.array_equal(board.array.g_state_us[:1000], replica.array.g_state_us[:1000])
    board.close()  # what the dying process leaves: the journal committed, the arrays not

    again = SimBoard(GEOMETRY, seed=4, state_path=path)
    np.testing.assert_array_equal(again.array.g_state_us, replica.array.g_state_us)
    np.testing.assert_array_equal(again.array.flags, replica.array.flags)


# -- kill -9 of the real process ---------------------------------------------------------
KILL_GEOMETRY = Geometry(1, 512, 2048)  # four journal chunks per command
ROUNDS = 6


def _sim_chip(path: Path) -> tuple[subprocess.Popen[str], str]:
    tiles, rows, cols = KILL_GEOMETRY.tiles, KILL_GEOMETRY.rows, KILL_GEOMETRY.cols
    process = subprocess.Popen(
        [sys.executable, "-m", "hwctl.cli", "sim-chip", "--port", "0", "--seed", "5",
         "--geometry", f"{tiles},{rows},{cols}", "--state", str(path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert process.stdout is not None
    resource = process.stdout.readline().strip().rsplit(" ", 1)[1]
    return process, resource


def test_kill_9_during_programming_leaves_every_chunk_before_or_after_its_pulse(tmp_path: Path) -> None:
    path = tmp_path / "chip.state"
    process, resource = _sim_chip(path)
    n = KILL_GEOMETRY.n_devices
    addresses = np.arange(n, dtype=np.uint32)
    rounds = [np.random.default_rng(r).uniform(70.0, 200.0, n).astype(np.float32) for r in range(ROUNDS)]
    try:
        chip = ChipDriver(open_transport(resource, timeout_s=30.0))
        chip.reset(addresses)
        replica = SimBoard(KILL_GEOMETRY, seed=5)  # the same chip, the same commands, in memory
        replica.reset(addresses)
        states = [np.array(replica.array.g_state_us)]
        for amplitudes in rounds:
            replica.set_pulse(addresses, amplitudes)
            states.append(np.array(replica.array.g_state_us))

        def program() -> None:
            try:
                for amplitudes in rounds:
                    chip.set_pulse(addresses, amplitudes)
            except DriverError:
                pass  # the board died under us, as intended

        thread = threading.Thread(target=program)
        thread.start()
        deadline = time.monotonic() + 20.0
        caught_mid_update = False
        while time.monotonic() < deadline and thread.is_alive():
            if committed_devices(path):
                caught_mid_update = True
                break
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        thread.join(timeout=30)
    finally:
        process.kill()
        process.communicate()
    assert read_metadata(path)["seed"] == 5

    loaded = SimBoard(KILL_GEOMETRY, seed=5, state_path=path)
    g = np.array(loaded.array.g_state_us)
    unsettled = (np.array(loaded.array.flags) & UNSETTLED) != 0
    chunk_rounds = []
    for start in range(0, n, CHUNK_DEVICES):
        part = slice(start, start + CHUNK_DEVICES)
        matches = [r for r, state in enumerate(states) if np.array_equal(g[part], state[part])]
        assert matches, f"devices {start}… are neither before nor after any pulse"
        chunk_rounds.append(matches[0])
        assert np.all(unsettled[part] == (matches[0] > 0))  # the flags landed with the values
    # Chunks are applied in address order: the last round reached a prefix of the chip.
    assert all(a >= b for a, b in itertools.pairwise(chunk_rounds))
    assert chunk_rounds[0] - chunk_rounds[-1] <= 1
    assert caught_mid_update, "the kill never landed inside an update: the test proved less than it says"

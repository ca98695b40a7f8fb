"""Host-side iterative program-and-verify over any `drivers.base.Chip`.

Each iteration sends at most one RESET command (devices that overshot), one SET
command (every still-converging device with its own amplitude) and one read command,
so the loop costs the same number of round trips over the wire as in process. A large
device set is programmed in blocks of `PROGRAM_BLOCK_DEVICES`, one loop per block, so
memory is bounded by a block.

The host's picture of a device is deliberately coarse (a lab calibration, not the
simulator's internals): a SET pulse of amplitude I moves G a fraction
`nominal_set_rate` of the way towards a level k·L(I), where L rises linearly from
0 µS at `amplitude_onset_ua` to `g_at_amplitude_max_us` at `amplitude_max_ua` and k is
a per-device level gain learned from every observed step (a scalar Kalman update
that trusts small, precise steps more than the large first one). Each pulse aims
`aim_fraction` of the remaining error so that overshoots, which cost a RESET and a
restart from near 0, stay rare.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

import numpy as np
import numpy.typing as npt

from drivers.base import Chip
from drivers.errors import LimitError

Progress = Callable[[int, int, int], None]
# Devices programmed together (one SET/verify loop): the loop's state (~70 bytes a device)
# and each iteration's temporaries are bounded by this, not by the chip (150 MB and ~8 MB
# arrays at 2 Mi devices; a 43.6 M-device network is 21 blocks).
PROGRAM_BLOCK_DEVICES = 1 << 21
MIN_LEARNING_LEVEL_US = 0.3  # below this the SET onset dominates: no gain learned


class DeviceStatus(IntEnum):
    """Outcome per device, stored as uint8."""

    CONVERGED = 0
    NOT_CONVERGED = 1
    STUCK = 2  # reads never moved although pulsed: a stuck or dead device
    LIMIT = 3  # still below target with the amplitude at `amplitude_max_ua`


@dataclass(frozen=True)
class ProgramSettings:
    """Knobs of the loop; the defaults are what the simulated chip is calibrated to."""

    tolerance_us: float = 0.2  # acceptance band ±(tolerance_us + tolerance_rel·G_T)
    tolerance_rel: float = 0.025  # grows with G, where verify reads are noisier
    max_iterations: int = 20
    amplitude_min_ua: float = 50.0
    amplitude_max_ua: float = 160.0
    amplitude_onset_ua: float = 57.0  # SET onset, where the host's level L(I) starts from 0 µS
    g_at_amplitude_max_us: float = 30.0
    nominal_set_rate: float = 0.6  # fraction of the way to the level one SET pulse goes
    aim_fraction: float = 0.7  # fraction of the remaining error each pulse aims for
    aim_above_band: float = 0.5  # aim this fraction of the band above target: devices
    # approach from below and stop at the first verify inside the band
    gain_prior_sigma: float = 0.1  # device-to-device spread of the level gain k
    gain_drift_sigma: float = 0.03  # how far k may wander between pulses (model mismatch)
    step_rate_sigma: float = 0.25  # relative spread of one SET step
    step_noise_us: float = 0.25  # absolute spread of one SET step plus the verify read
    reset_level_us: float = 0.1  # where the host assumes a RESET leaves a device
    stuck_band_us: float = 0.5  # reads spanning less than this (+ the relative part,
    stuck_band_rel: float = 0.1  # for read noise at high G) over all pulses: stuck

    def __post_init__(self) -> None:
        if not 0 < self.amplitude_min_ua < self.amplitude_max_ua:
            raise ValueError("need 0 < amplitude_min_ua < amplitude_max_ua")
        if self.tolerance_us <= 0 or self.max_iterations < 1:
            raise ValueError("tolerance_us must be positive and max_iterations at least 1")


@dataclass(frozen=True)
class ProgrammingResult:
    """One programming run, per device in the order of its addresses: where each device
    was meant to go and where it ended. What program-and-verify returns and what the store
    keeps for a run (`hwctl.store.readouts`: the four outcome vectors; the addresses and
    targets are its mapping's)."""

    addresses: npt.NDArray[np.uint32]
    target_g_us: npt.NDArray[np.float32]
    g_final_us: npt.NDArray[np.float32]  # last verify read
    iterations: npt.NDArray[np.int32]  # SET/verify iterations spent on the device
    status: npt.NDArray[np.uint8]  # DeviceStatus codes
    programmed_s: npt.NDArray[np.float64]  # board time of each device's last pulse

    @property
    def n_devices(self) -> int:
        return int(self.addresses.size)

    @property
    def converged_fraction_nonzero(self) -> float:
        nonzero = self.target_g_us > 0
        if not nonzero.any():
            return 1.0
        return float(np.mean(self.status[nonzero] == DeviceStatus.CONVERGED))

    @property
    def iterations_mean(self) -> float:
        return float(self.iterations.mean()) if self.iterations.size else 0.0

    def count(self, status: DeviceStatus) -> int:
        return int(np.count_nonzero(self.status == status))


@dataclass(frozen=True)
class ResumePoint:
    """Where an interrupted programming stands: every device read now, and a board time at
    or after the last pulse before the interruption (the `programmed_s` recorded for the
    devices found within tolerance: an upper bound on their true last pulse)."""

    g_us: npt.NDArray[np.float32]
    programmed_s: float


def check_amplitudes(chip: Chip, settings: ProgramSettings) -> None:
    """Refuse settings the board would reject, before any pulse is sent."""
    limit_ua = chip.amplitude_limit_ua()
    if settings.amplitude_max_ua > limit_ua:
        raise LimitError(
            f"program-and-verify needs up to {settings.amplitude_max_ua} uA but the board's "
            f"amplitude limit is {limit_ua} uA; lower amplitude_max_ua or raise the limit"
        )


def program_and_verify(
    chip: Chip,
    addresses: npt.NDArray[np.uint32],
    target_g_us: npt.NDArray[np.float32],
    settings: ProgramSettings = ProgramSettings(),
    progress: Progress | None = None,
    resume: ResumePoint | None = None,
    block_devices: int = PROGRAM_BLOCK_DEVICES,
) -> ProgrammingResult:
    """Program every device to its target: RESET, then SET/verify until within tolerance.

    The devices are programmed `block_devices` at a time (each block to the end before the
    next), so the loop's state and temporaries are bounded by a block, not the chip: what
    stays per device is the result (17 bytes). `progress(iteration, remaining, converged)`
    counts over every device (the blocks not started yet are remaining).
    With `resume`, devices already within tolerance are left alone; the others go on
    from where they read (SET from there, or RESET first if above their band).
    """
    s = settings
    addresses = np.ascontiguousarray(addresses, np.uint32)
    targets = np.ascontiguousarray(target_g_us, np.float32)
    if addresses.shape != targets.shape or addresses.ndim != 1:
        raise ValueError("addresses and target_g_us must be 1-D arrays of the same length")
    if targets.size and (not np.isfinite(targets).all() or targets.min() < 0):
        raise ValueError("targets must be finite conductances >= 0 uS")
    if block_devices < 1:
        raise ValueError(f"a programming block holds at least one device, got {block_devices}")
    check_amplitudes(chip, s)
    n = addresses.size
    result = ProgrammingResult(
        addresses, targets, np.zeros(n, np.float32), np.zeros(n, np.int32),
        np.full(n, DeviceStatus.NOT_CONVERGED, np.uint8), np.zeros(n, np.float64),
    )  # fmt: skip
    if resume is not None and resume.g_us.shape != targets.shape:
        raise ValueError(f"resume reads {resume.g_us.size} devices, programming {n}")
    for start in range(0, n, block_devices):
        block = slice(start, min(start + block_devices, n))

        def block_progress(iteration: int, remaining: int, converged: int, first: int = start) -> None:
            if progress is not None:
                progress(iteration, n - first - converged, first + converged)

        start_g = None if resume is None else np.ascontiguousarray(resume.g_us[block], np.float32)
        _program_block(chip, s, result, block, block_progress, start_g, resume)
    return result


def _program_block(
    chip: Chip, s: ProgramSettings, result: ProgrammingResult, block: slice, progress: Progress,
    start_g_us: npt.NDArray[np.float32] | None, resume: ResumePoint | None,
) -> None:  # fmt: skip
    """The SET/verify loop over the devices of `block`, writing their outcome into `result`."""
    final, iterations, status = result.g_final_us[block], result.iterations[block], result.status[block]
    t_programmed = result.programmed_s[block]
    targets = result.target_g_us[block]
    n = targets.size
    slope_ua_per_us = np.float32((s.amplitude_max_ua - s.amplitude_onset_ua) / s.g_at_amplitude_max_us)
    rate = np.float32(s.nominal_set_rate)
    reach = np.float32(s.aim_fraction / s.nominal_set_rate)
    # The converging set, compacted each iteration: index into the block's result views
    # (None while it is the whole block, in order: plain slices, no gathers or scatters).
    idx: npt.NDArray[np.intp] | None = None
    addr, tgt = result.addresses[block], targets
    tol = np.float32(s.tolerance_us) + np.float32(s.tolerance_rel) * targets
    aim_us = tgt + np.float32(s.aim_above_band) * tol
    gain = np.ones(n, np.float32)
    gain_var = np.full(n, np.float32(s.gain_prior_sigma**2))
    g = np.full(n, np.float32(s.reset_level_us))  # where each device is believed to be
    over = np.ones(n, bool)  # the first iteration RESETs everything
    g_min = np.full(n, np.inf, np.float32)
    g_max = np.full(n, -np.inf, np.float32)
    clipped = np.zeros(n, bool)
    if start_g_us is not None and resume is not None:
        settled = np.abs(targets - start_g_us) <= tol
        final[:] = start_g_us
        status[settled] = DeviceStatus.CONVERGED
        t_programmed[settled] = resume.programmed_s
        keep = ~settled
        idx, addr, tgt, tol, g = np.flatnonzero(keep), addr[keep], tgt[keep], tol[keep], start_g_us[keep]
        aim_us, gain, gain_var, clipped = aim_us[keep], gain[keep], gain_var[keep], clipped[keep]
        over = g - tgt > tol
        g_min, g_max = g.copy(), g.copy()
        if idx.size == 0:
            return

    for iteration in range(1, s.max_iterations + 1):
        active = slice(None) if idx is None else idx
        if over.all():
            chip.reset(addr)
            t_programmed[active] = chip.board_time_s()
        elif over.any():
            chip.reset(addr[over])
            t_programmed[np.flatnonzero(over) if idx is None else idx[over]] = chip.board_time_s()
        base = np.where(over, np.float32(s.reset_level_us), g)
        level_us = aim_us - base
        level_us *= reach
        level_us += base
        np.maximum(level_us, np.float32(0.0), out=level_us)
        level_us /= gain
        amplitude_ua = slope_ua_per_us * level_us
        amplitude_ua += np.float32(s.amplitude_onset_ua)
        clipped = amplitude_ua > s.amplitude_max_ua
        np.clip(
            amplitude_ua, np.float32(s.amplitude_min_ua), np.float32(s.amplitude_max_ua), out=amplitude_ua
        )
        pulse = tgt > 0
        if pulse.all():
            chip.set_pulse(addr, amplitude_ua)
            t_programmed[active] = chip.board_time_s()
        elif pulse.any():
            chip.set_pulse(addr[pulse], amplitude_ua[pulse])
            t_programmed[np.flatnonzero(pulse) if idx is None else idx[pulse]] = chip.board_time_s()
        read = chip.read_block(addr)
        iterations[active] = iteration
        final[active] = read
        np.minimum(g_min, read, out=g_min)
        np.maximum(g_max, read, out=g_max)

        err = tgt - read
        done = np.abs(err) <= tol
        status[np.flatnonzero(done) if idx is None else idx[done]] = DeviceStatus.CONVERGED
        # Learn the level gain from the step, where the level was above 0 and not clipped.
        step = read - base
        level_floor_us = np.maximum(level_us, np.float32(MIN_LEARNING_LEVEL_US))
        observed = (base + step / rate) / level_floor_us
        obs_var = (np.float32(s.step_rate_sigma) * step) ** 2 + np.float32(s.step_noise_us**2)
        obs_var = obs_var / (rate * level_floor_us) ** 2
        learn = (level_us > MIN_LEARNING_LEVEL_US) & ~clipped
        k = np.where(learn, gain_var / (gain_var + obs_var), np.float32(0.0))
        gain = np.clip(gain + k * (observed - gain), np.float32(0.3), np.float32(3.0))
        gain_var = (1 - k) * gain_var + np.float32(s.gain_drift_sigma**2)
        over = err < -tol
        keep = ~done
        idx = np.flatnonzero(keep) if idx is None else idx[keep]
        addr, tgt, tol, aim_us, g, over = (
            addr[keep],
            tgt[keep],
            tol[keep],
            aim_us[keep],
            read[keep],
            over[keep],
        )
        gain, gain_var = gain[keep], gain_var[keep]
        g_min, g_max, clipped = g_min[keep], g_max[keep], clipped[keep]
        progress(iteration, int(idx.size), n - int(idx.size))
        if idx.size == 0:
            break

    left = np.arange(n) if idx is None else idx  # max_iterations passed with none converged
    still = (g_max - g_min) < s.stuck_band_us + s.stuck_band_rel * g_max
    status[left[still]] = DeviceStatus.STUCK
    status[left[~still & clipped]] = DeviceStatus.LIMIT

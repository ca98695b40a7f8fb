"""Program a network onto a chip and read its conductances back at given times after programming.

`program_network` works on any `Chip`; `simulate_readouts` is the offline path on an
in-process simulated board (for `hwctl evaluate --sim-times`, tests and benchmarks), so
it alone imports the simulator, when it runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from torch import nn

from drivers.base import Chip
from hwctl.mapping import DeviceMap, map_network
from hwctl.nn.conductance import export_layers
from hwctl.program_verify import ProgrammingResult, ProgramSettings, program_and_verify


@dataclass(frozen=True)
class NetworkReadouts:
    """One programming of a network: its device map, P&V outcome and, by time (s), the
    reads of every device taken there (several reads = draws of the read noise)."""

    device_map: DeviceMap
    program: ProgrammingResult
    draws_by_time_s: dict[float, list[npt.NDArray[np.float32]]]

    @property
    def g_us_by_time_s(self) -> dict[float, npt.NDArray[np.float32]]:
        """The first read at each time."""
        return {t_s: draws[0] for t_s, draws in self.draws_by_time_s.items()}


def program_network(chip: Chip, model: nn.Module, settings: ProgramSettings | None = None
                    ) -> tuple[DeviceMap, ProgrammingResult]:  # fmt: skip
    """Map the model's analog weights onto `chip` and program them with program-and-verify."""
    device_map = map_network(export_layers(model), chip.geometry())
    result = program_and_verify(chip, device_map.addresses, device_map.target_g_us,
                                settings or ProgramSettings())  # fmt: skip
    return device_map, result


def simulate_readouts(
    model: nn.Module,
    times_after_program_s: Sequence[float],
    seed: int = 0,
    settings: ProgramSettings | None = None,
    reads_per_time: int = 1,
) -> NetworkReadouts:
    """Program `model` on an in-process SimBoard and read all devices `reads_per_time`
    times at each time (back to back on the frozen virtual clock: fresh read noise, the
    same drift).

    Times count from the end of programming (the last device's last pulse) on the
    board's virtual clock; every device drifts from its own programming time.
    """
    if reads_per_time < 1:
        raise ValueError(f"reads_per_time must be at least 1, got {reads_per_time}")
    from drivers.sim.board import DEFAULT_GEOMETRY, SimBoard

    board = SimBoard(DEFAULT_GEOMETRY, seed=seed)
    device_map, result = program_network(board, model, settings)
    t_end = float(result.programmed_s.max()) if result.programmed_s.size else board.clock.now_s()
    readouts: dict[float, list[npt.NDArray[np.float32]]] = {}
    for t_s in sorted(times_after_program_s):
        wait_s = t_end + t_s - board.clock.now_s()
        if wait_s > 0:
            board.clock.advance(wait_s)
        readouts[float(t_s)] = [board.read_block(device_map.addresses) for _ in range(reads_per_time)]
    return NetworkReadouts(device_map, result, readouts)

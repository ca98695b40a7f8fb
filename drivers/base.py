"""The small typed protocol at the boundary between `hwctl` and any chip driver.

A chip is anything that can RESET and SET-pulse devices, read them in blocks, tell its
board time and go to a safe state. `hwctl` depends on this protocol, never on a
concrete transport.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

Addresses = npt.NDArray[np.uint32]
Float32s = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Geometry:
    """Crossbar geometry: `tiles` arrays of `rows` word lines × `cols` bit lines.

    A device address is `tile·rows·cols + row·cols + col`.
    """

    tiles: int
    rows: int
    cols: int

    @property
    def n_devices(self) -> int:
        return self.tiles * self.rows * self.cols

    def address(self, tile: int, row: int, col: int) -> int:
        return (tile * self.rows + row) * self.cols + col


@dataclass(frozen=True)
class Identity:
    vendor: str
    model: str
    serial: str
    firmware: str


@runtime_checkable
class Chip(Protocol):
    """What program-and-verify, readback campaigns and the worker need from a board."""

    def identify(self) -> Identity: ...

    def geometry(self) -> Geometry: ...

    def reset(self, addresses: Addresses) -> None: ...

    def set_pulse(self, addresses: Addresses, amplitudes_ua: Float32s) -> None: ...

    def read_block(self, addresses: Addresses) -> Float32s: ...

    def board_time_s(self) -> float: ...

    def amplitude_limit_ua(self) -> float: ...

    def safe_state(self) -> None: ...

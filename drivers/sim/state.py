"""Where a simulated chip's devices live: in memory (volatile) or in a state file.

One array per device property (`FIELDS`, 25 bytes per device), so a 50 M-device chip
holds 1.25 GB. A `FileStore` keeps the same arrays memory-mapped on one file, which
makes the chip non-volatile like a real PCM chip: a restarted `hwctl sim-chip --state`
finds its devices as they were and its clock continuing.

Crash safety (kill -9, OOM, `SimBoard.power_cycle`). Every store into a shared mapping
is in the kernel's page cache the moment it executes, so what a dying process can leave
behind is a half-done *update*, never a torn file. Updates therefore go through a redo
journal, one chunk (≤ `CHUNK_DEVICES` devices) at a time: the chunk's new values are
written to the journal area, then one aligned 8-byte word (device count | field mask)
commits them, then they are scattered into the arrays and the word is cleared. Opening
the file replays a committed journal (scattering absolute values is idempotent), so
every chunk is applied entirely or not at all, and a command killed half-way leaves a
prefix of its chunks applied — as a real board that lost power mid-command would.
The board clock is saved the same way: two slots of (board s, wall s, rate) and a
generation word that points at the valid one, rewritten on every clock jump before the
jump is acknowledged. The file is created under a temporary name and renamed when
complete. An OS crash or host power loss keeps what was last synced (`sync()`: clean
exit, power cycle); that is out of scope for a simulator and documented as such.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from drivers.base import Addresses, Geometry
from drivers.pcm_model import PCMModel

# One array per device property; itemsizes sum to BYTES_PER_DEVICE.
FIELDS: dict[str, np.dtype[Any]] = {
    "g_state_us": np.dtype(np.float32),  # right after the last pulse
    "g_t0_us": np.dtype(np.float32),  # after relaxation, at t0 (valid once settled)
    "drift_nu": np.dtype(np.float32),  # drift exponent of the last programming event
    "t_programmed_s": np.dtype(np.float64),  # board time of the last pulse
    "gain": np.dtype(np.float32),  # fabrication: device-to-device SET gain
    "flags": np.dtype(np.uint8),  # UNSETTLED | STUCK | DEAD
}
BYTES_PER_DEVICE = sum(dtype.itemsize for dtype in FIELDS.values())
UNSETTLED, STUCK, DEAD = np.uint8(1), np.uint8(2), np.uint8(4)
FROZEN = STUCK | DEAD  # pulses do not move these devices
CHUNK_DEVICES = 1 << 18  # devices per update: bounds every temporary and the journal

MAGIC = "hwctl-sim-chip-state"
VERSION = 1
_PAGE = 4096
_META_BYTES = 2 * _PAGE
# Words of the control page (uint64 / float64 views of the same 8-byte cells).
_W_TIME_GEN, _W_SLOTS, _W_HIGH_WATER, _W_BOOTS, _W_JOURNAL = 0, 1, 7, 8, 9
_COUNT_BITS = 40
_FIELD_BITS = {name: 1 << i for i, name in enumerate(FIELDS)}

Values = dict[str, Any]  # per field: one value per device, or one for all


class StateFileError(ValueError):
    """The state file is not one this board can continue from (kind, geometry, seed, model)."""


class MemoryStore:
    """Volatile device arrays: zero pages until touched, lost with the process."""

    fresh = True
    boots = 0
    path: Path | None = None

    def __init__(self, n_devices: int) -> None:
        self.n_devices = n_devices
        self.arrays = {name: np.zeros(n_devices, dtype) for name, dtype in FIELDS.items()}

    def apply(self, addresses: Addresses, values: Values) -> None:
        """Write `values` (per field) of the devices at `addresses`."""
        for name, value in values.items():
            self.arrays[name][addresses] = value

    def note_time(self, board_s: float) -> None:
        """A board time the host may have seen (kept only by a state file)."""

    def save_clock(self, board_s: float, wall_rate: float) -> None:
        """Record the clock after a jump (kept only by a state file)."""

    def sealed(self) -> None:
        """Fabrication is complete."""

    def sync(self) -> None:
        """Make everything written so far durable (nothing to do in memory)."""

    def close(self) -> None:
        self.arrays = {}


class FileStore(MemoryStore):
    """Device arrays memory-mapped on a state file, updated through a redo journal."""

    def __init__(self, path: Path, n_devices: int, metadata: dict[str, Any], fresh: bool) -> None:
        self.path = self._target = path
        self.n_devices = n_devices
        self.fresh = fresh
        self._lock = threading.Lock()
        file = path.with_name(path.name + ".creating") if fresh else path
        layout = _layout(n_devices)
        if fresh:
            _create_file(file, metadata, file_bytes(n_devices))
        self._file = file
        self._lock_fd = _lock(file)
        self._maps: list[np.memmap[Any, Any]] = []
        control = self._map(file, np.uint64, layout["control"], _PAGE // 8)
        self._words_u64 = control
        self._words_f64 = control.view(np.float64)
        self._journal_addresses = self._map(file, np.uint32, layout["journal.addresses"], CHUNK_DEVICES)
        self._journal = {name: self._map(file, dt, layout[f"journal.{name}"], CHUNK_DEVICES)
                         for name, dt in FIELDS.items()}
        self.arrays = {name: self._map(file, dt, layout[name], n_devices) for name, dt in FIELDS.items()}
        if not fresh:
            self._replay_journal()
            self._words_u64[_W_BOOTS] += 1
        self.boots = int(self._words_u64[_W_BOOTS])

    def _map(self, file: Path, dtype: Any, offset: int, count: int) -> np.memmap[Any, Any]:
        array: np.memmap[Any, Any] = np.memmap(file, dtype=dtype, mode="r+", offset=offset, shape=(count,))
        self._maps.append(array)
        return array

    # -- devices ---------------------------------------------------------------------
    def apply(self, addresses: Addresses, values: Values) -> None:
        """Journal, commit, scatter, clear: the chunk lands entirely or not at all."""
        n = addresses.size
        if n > CHUNK_DEVICES:
            raise ValueError(f"{n} devices in one update, the journal holds {CHUNK_DEVICES}")
        mask = 0
        self._journal_addresses[:n] = addresses
        for name, value in values.items():
            self._journal[name][:n] = value
            mask |= _FIELD_BITS[name]
        self._words_u64[_W_JOURNAL] = n | mask << _COUNT_BITS  # the commit point
        super().apply(addresses, values)
        self._words_u64[_W_JOURNAL] = 0

    def _replay_journal(self) -> None:
        word = int(self._words_u64[_W_JOURNAL])
        if word == 0:
            return
        n, mask = word & ((1 << _COUNT_BITS) - 1), word >> _COUNT_BITS
        addresses = np.array(self._journal_addresses[:n])
        values: Values = {name: self._journal[name][:n] for name, bit in _FIELD_BITS.items() if mask & bit}
        super().apply(addresses, values)
        self._words_u64[_W_JOURNAL] = 0

    # -- board clock -----------------------------------------------------------------
    def save_clock(self, board_s: float, wall_rate: float) -> None:
        """Write the clock to the spare slot, then point the generation word at it."""
        with self._lock:
            generation = int(self._words_u64[_W_TIME_GEN]) + 1
            slot = _W_SLOTS + 3 * (generation % 2)
            self._words_f64[slot : slot + 3] = (board_s, time.time(), wall_rate)
            self._words_u64[_W_TIME_GEN] = generation
            self._raise_high_water(board_s)

    def note_time(self, board_s: float) -> None:
        with self._lock:
            self._raise_high_water(board_s)

    def _raise_high_water(self, board_s: float) -> None:
        if board_s > self._words_f64[_W_HIGH_WATER]:
            self._words_f64[_W_HIGH_WATER] = board_s

    def resume_time_s(self) -> float:
        """Board time at power-up: saved time + wall time since × the saved rate, never
        earlier than any board time the host was shown (a virtual clock has rate 0)."""
        generation = int(self._words_u64[_W_TIME_GEN])
        slot = _W_SLOTS + 3 * (generation % 2)
        board_s, wall_s, rate = (float(v) for v in self._words_f64[slot : slot + 3])
        continued_s = board_s + max(time.time() - wall_s, 0.0) * rate
        return max(continued_s, float(self._words_f64[_W_HIGH_WATER]))

    # -- lifecycle -------------------------------------------------------------------
    def sealed(self) -> None:
        """A new file becomes the state file only once fabrication is complete."""
        if not self.fresh:
            return
        self.sync()
        os.replace(self._file, self._target)
        _fsync_directory(self._target.parent)
        self._file = self._target

    def sync(self) -> None:
        for array in self._maps:
            array.flush()

    def close(self) -> None:
        self.sync()
        self.arrays, self._journal, self._maps = {}, {}, []
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the lock
            self._lock_fd = None


def open_store(
    path: Path, geometry: Geometry, seed: int, model: PCMModel | None
) -> tuple[FileStore, PCMModel]:
    """The chip saved at `path`, or a new one there; the model is the file's."""
    metadata = {"magic": MAGIC, "version": VERSION, "seed": seed,
                "geometry": [geometry.tiles, geometry.rows, geometry.cols],
                "bytes_per_device": BYTES_PER_DEVICE, "chunk_devices": CHUNK_DEVICES}
    if not path.exists():
        chosen = model or PCMModel()
        metadata["model"] = json.loads(chosen.to_text())
        return FileStore(path, geometry.n_devices, metadata, fresh=True), chosen
    saved = read_metadata(path)
    for key in ("magic", "version", "geometry", "seed", "bytes_per_device", "chunk_devices"):
        if saved.get(key) != metadata[key]:
            found, wanted = saved.get(key), metadata[key]
            raise StateFileError(f"state file {path} has {key} {found!r}, this board {wanted!r}")
    saved_model = PCMModel.from_text(json.dumps(saved["model"]))
    if model is not None and model != saved_model:
        raise StateFileError(f"state file {path} was made with another PCM model; omit --model to continue")
    expected = file_bytes(geometry.n_devices)
    if path.stat().st_size != expected:
        raise StateFileError(f"state file {path} is {path.stat().st_size} bytes, expected {expected}")
    return FileStore(path, geometry.n_devices, saved, fresh=False), saved_model


def read_metadata(path: Path) -> dict[str, Any]:
    """The header of a state file (geometry, seed, model); StateFileError if not one."""
    with path.open("rb") as file:
        head = file.read(_META_BYTES)
    try:
        metadata = json.loads(head.rstrip(b"\0 ").decode())
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise StateFileError(f"{path} is not a simulated-chip state file") from None
    if not isinstance(metadata, dict) or metadata.get("magic") != MAGIC:
        raise StateFileError(f"{path} is not a simulated-chip state file")
    return metadata


def file_bytes(n_devices: int) -> int:
    """Size of the state file of an `n_devices` chip (header and journal included)."""
    return _layout(n_devices)["end"]


def committed_devices(path: Path) -> int:
    """Devices of an update committed to the journal and not yet landed (0 when idle)."""
    control = np.memmap(path, np.uint64, mode="r", offset=_layout(0)["control"], shape=(_PAGE // 8,))
    return int(control[_W_JOURNAL]) & ((1 << _COUNT_BITS) - 1)


def _layout(n_devices: int) -> dict[str, int]:
    """Byte offset of each region: metadata, control page, journal, device arrays."""
    offsets, position = {}, _META_BYTES
    regions = [("control", _PAGE), ("journal.addresses", 4 * CHUNK_DEVICES)]
    regions += [(f"journal.{name}", dt.itemsize * CHUNK_DEVICES) for name, dt in FIELDS.items()]
    regions += [(name, dt.itemsize * n_devices) for name, dt in FIELDS.items()]
    for name, size in regions:
        offsets[name] = position
        position += -(-size // _PAGE) * _PAGE
    offsets["end"] = position
    return offsets


def _create_file(file: Path, metadata: dict[str, Any], size: int) -> None:
    text = json.dumps(metadata).encode()
    if len(text) > _META_BYTES:
        raise StateFileError(f"state-file header of {len(text)} bytes exceeds {_META_BYTES}")
    with file.open("wb") as handle:
        handle.write(text)
        handle.truncate(size)
        # Reserve the disk now: a full disk is an error at power-up, never a SIGBUS mid-pulse.
        os.posix_fallocate(handle.fileno(), 0, size)


def _lock(file: Path) -> int | None:
    """One process per state file: an exclusive lock the kernel drops when the holder dies."""
    fd = os.open(file, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StateFileError(f"state file {file} is in use by another simulated chip") from None
    return fd


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

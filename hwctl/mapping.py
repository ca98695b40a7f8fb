"""Weights to differential conductance pairs, placed on the chip's crossbar tiles.

pcm-model.md §1: per layer s_l = G_max / max|W_l|; a positive weight sets G+ = s·W and
RESETs G−, a negative one the other way round, zero RESETs both. Placement follows the
crossbar: the unrolled input rows sit on word lines, each weight's pair on two
neighbouring bit lines, so a layer is cut into blocks of at most `rows` word lines and
`cols/2` weight columns and the blocks are shelf-packed into tiles.

Layers named as digital (e.g. the first conv and the last FC, as the paper kept them
for ImageNet) are not placed: they keep their checkpoint weights and the map records
their names, so the rebuild knows which layers the chip does not hold.

Canonical device order, relied on by every readout vector and the network rebuild:
analog layer by layer; for a layer at offset o with n weights, devices o..o+n−1 are the
G+ devices of its weights in row-major order of the (rows_in, cols_out) matrix, and
o+n..o+2n−1 the G− devices in the same order. The map holds one address (uint32) and
one target (float32) per device, written in place layer by layer: 8 bytes a device,
349 MB for ResNet-34's 43.6 M devices, with per-layer temporaries only.
"""

from __future__ import annotations

import io
import json
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from drivers.base import Geometry


class MappingError(ValueError):
    """The network cannot be placed on this chip (too large, or malformed weights)."""


@dataclass(frozen=True)
class LayerWeights:
    """One layer's weights as an unrolled float32 (rows_in, cols_out) matrix."""

    name: str
    matrix: npt.NDArray[np.float32]


@dataclass(frozen=True)
class Block:
    """A rectangle of one layer's matrix placed at (tile, row, col) on the chip."""

    row0: int  # first matrix row
    col0: int  # first matrix column (weight column, i.e. two bit lines each)
    n_rows: int
    n_cols: int
    tile: int
    row: int  # first word line
    col: int  # first bit line


@dataclass(frozen=True)
class LayerPlacement:
    name: str
    shape: tuple[int, int]
    scale_us_per_weight: float
    offset: int  # first canonical device index
    n_weights: int
    blocks: tuple[Block, ...] = field(default=())


@dataclass(frozen=True)
class DeviceInfo:
    layer: str
    weight_index: int
    sign: int  # +1 for the G+ device, -1 for G-
    tile: int
    row: int
    col: int


@dataclass(frozen=True)
class Utilisation:
    devices_used: int
    tiles_used: int
    fraction_of_chip: float
    fraction_of_used_tiles: float


class DeviceMap:
    """Where every weight lives on the chip, and the conductance each device should get."""

    def __init__(
        self,
        geometry: Geometry,
        g_max_us: float,
        layers: tuple[LayerPlacement, ...],
        addresses: npt.NDArray[np.uint32],
        target_g_us: npt.NDArray[np.float32],
        digital_layers: tuple[str, ...] = (),
    ) -> None:
        self.geometry = geometry
        self.g_max_us = g_max_us
        self.layers = layers
        self.addresses = addresses
        self.target_g_us = target_g_us
        self.digital_layers = digital_layers  # not on the chip: they keep their checkpoint weights
        self._offsets = np.array([layer.offset for layer in layers], np.int64)

    @property
    def n_devices(self) -> int:
        return int(self.addresses.size)

    @property
    def utilisation(self) -> Utilisation:
        g = self.geometry
        tiles_used = len({b.tile for layer in self.layers for b in layer.blocks})
        per_tile = g.rows * g.cols
        return Utilisation(
            devices_used=self.n_devices,
            tiles_used=tiles_used,
            fraction_of_chip=self.n_devices / g.n_devices,
            fraction_of_used_tiles=self.n_devices / (tiles_used * per_tile) if tiles_used else 0.0,
        )

    def weights_from_g(self, g_us: npt.NDArray[np.floating]) -> dict[str, npt.NDArray[np.float32]]:
        """W = (G+ − G−) / s_l per layer, shaped (rows_in, cols_out)."""
        if g_us.shape != (self.n_devices,):
            raise MappingError(f"expected {self.n_devices} conductances, got shape {g_us.shape}")
        out = {}
        for layer in self.layers:
            o, n = layer.offset, layer.n_weights
            w = (g_us[o : o + n].astype(np.float64) - g_us[o + n : o + 2 * n]) / layer.scale_us_per_weight
            out[layer.name] = w.astype(np.float32).reshape(layer.shape)
        return out

    def layer_conductance_sums_us(self, g_us: npt.NDArray[np.floating]) -> dict[str, float]:
        """Σ(G⁺ + G⁻) per layer: the summed current of both bit lines under an all-ones input."""
        if g_us.shape != (self.n_devices,):
            raise MappingError(f"expected {self.n_devices} conductances, got shape {g_us.shape}")
        return {
            layer.name: float(g_us[layer.offset : layer.offset + 2 * layer.n_weights].sum(dtype=np.float64))
            for layer in self.layers
        }

    def device_table(self) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int64], npt.NDArray[np.int8]]:
        """Per canonical device: layer index, weight index within the layer, sign (±1).

        Filled layer by layer into the three result arrays (13 bytes a device), no temporaries.
        """
        layer_index = np.empty(self.n_devices, np.int32)
        weight_index = np.empty(self.n_devices, np.int64)
        sign = np.empty(self.n_devices, np.int8)
        for k, layer in enumerate(self.layers):
            o, n = layer.offset, layer.n_weights
            layer_index[o : o + 2 * n] = k
            weight_index[o : o + n] = np.arange(n)
            weight_index[o + n : o + 2 * n] = weight_index[o : o + n]
            sign[o : o + n], sign[o + n : o + 2 * n] = 1, -1
        return layer_index, weight_index, sign

    def device_info(self, index: int) -> DeviceInfo:
        if not 0 <= index < self.n_devices:
            raise IndexError(f"device {index} outside 0..{self.n_devices - 1}")
        layer = self.layers[int(np.searchsorted(self._offsets, index, side="right") - 1)]
        local = index - layer.offset
        sign = 1 if local < layer.n_weights else -1
        g = self.geometry
        tile, rest = divmod(int(self.addresses[index]), g.rows * g.cols)
        row, col = divmod(rest, g.cols)
        return DeviceInfo(layer.name, local % layer.n_weights, sign, tile, row, col)

    # -- serialization for the SQL store -------------------------------------------
    def to_bytes(self) -> bytes:
        """The placement (JSON) and the targets, uncompressed: the addresses follow from the
        blocks and are rebuilt on load. 4 bytes a device; compressing ResNet-34's 43.6 M
        devices took 28 s for a third less."""
        meta = {
            "geometry": asdict(self.geometry),
            "g_max_us": self.g_max_us,
            "layers": [asdict(layer) for layer in self.layers],
            "digital_layers": list(self.digital_layers),
        }
        buf = io.BytesIO()
        np.savez(buf, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8), target_g_us=self.target_g_us)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> DeviceMap:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            meta = json.loads(z["meta"].tobytes().decode())
            targets = z["target_g_us"]
            stored_addresses = z["addresses"] if "addresses" in z.files else None  # maps stored with them
        geometry, layers = placement_from_meta(meta)
        if stored_addresses is None:
            addresses = np.empty(targets.size, np.uint32)
            for layer in layers:
                _place_addresses(layer, geometry, addresses)
        else:
            addresses = stored_addresses
        digital = tuple(meta.get("digital_layers", ()))  # maps stored before digital layers existed
        return cls(geometry, meta["g_max_us"], layers, addresses, targets, digital)


def placement_from_meta(meta: dict[str, Any]) -> tuple[Geometry, tuple[LayerPlacement, ...]]:
    """The chip and every layer's placement from a stored map's JSON part (`DeviceMap.to_bytes`):
    where each device sits, without its targets."""
    layers = tuple(
        LayerPlacement(
            name=raw["name"],
            shape=(raw["shape"][0], raw["shape"][1]),
            scale_us_per_weight=raw["scale_us_per_weight"],
            offset=raw["offset"],
            n_weights=raw["n_weights"],
            blocks=tuple(Block(**b) for b in raw["blocks"]),
        )
        for raw in meta["layers"]
    )
    return Geometry(**meta["geometry"]), layers


def _cut(rows: int, cols: int, geometry: Geometry) -> list[tuple[int, int, int, int]]:
    """Split a (rows, cols) matrix into blocks that each fit one tile."""
    cols_per_tile = geometry.cols // 2
    if cols_per_tile == 0:
        raise MappingError(f"tiles of {geometry.cols} bit line(s) cannot hold a differential pair")
    return [
        (r0, c0, min(geometry.rows, rows - r0), min(cols_per_tile, cols - c0))
        for r0 in range(0, rows, geometry.rows)
        for c0 in range(0, cols, cols_per_tile)
    ]


def _shelf_pack(sizes: list[tuple[int, int]], geometry: Geometry) -> list[tuple[int, int, int]]:
    """Place (n_rows, n_cols) blocks, tallest first, on shelves; return (tile, row, col) each."""
    placed: list[tuple[int, int, int]] = [(0, 0, 0)] * len(sizes)
    # Each shelf: [tile, row, height, next free bit line].
    shelves: list[list[int]] = []
    tile_fill = [0] * geometry.tiles  # word lines taken by shelves, per tile
    for key in sorted(range(len(sizes)), key=lambda k: (-sizes[k][0], -sizes[k][1])):
        n_rows, n_cols = sizes[key]
        width = 2 * n_cols
        shelf = next((s for s in shelves if s[2] >= n_rows and s[3] + width <= geometry.cols), None)
        if shelf is None:
            tile = next((t for t in range(geometry.tiles) if tile_fill[t] + n_rows <= geometry.rows), None)
            if tile is None:
                raise MappingError(
                    f"the network does not fit: {geometry.tiles} tiles of {geometry.rows}x"
                    f"{geometry.cols} are full (a {n_rows}x{width} block is left)"
                )
            shelf = [tile, tile_fill[tile], n_rows, 0]
            tile_fill[tile] += n_rows
            shelves.append(shelf)
        placed[key] = (shelf[0], shelf[1], shelf[3])
        shelf[3] += width
    return placed


def _place_addresses(layer: LayerPlacement, geometry: Geometry, addresses: npt.NDArray[np.uint32]) -> None:
    """Write the layer's device addresses into `addresses` at its offset, block by block.

    Weight (r, c) of a block at (tile, row, col) sits on word line row + (r − r0) and its
    G+ device on bit line col + 2(c − c0); its G− device is the next bit line.
    """
    o, n = layer.offset, layer.n_weights
    plus = addresses[o : o + n].reshape(layer.shape)
    for b in layer.blocks:
        base = geometry.address(b.tile, b.row, b.col)
        plus[b.row0 : b.row0 + b.n_rows, b.col0 : b.col0 + b.n_cols] = (
            base + np.arange(b.n_rows)[:, None] * geometry.cols + 2 * np.arange(b.n_cols)[None, :]
        )
    np.add(plus.ravel(), 1, out=addresses[o + n : o + 2 * n])


def check_placement(shapes: Sequence[tuple[int, int]], geometry: Geometry) -> None:
    """Whether matrices of these (rows, cols) shapes can be placed on `geometry` as
    `map_network` places them (MappingError saying what is left over when not), without
    building the map."""
    cuts = [(nr, nc) for rows, cols in shapes for _, _, nr, nc in _cut(rows, cols, geometry)]
    _shelf_pack(cuts, geometry)


def analog_names(names: Sequence[str], digital_layers: Collection[str]) -> set[str]:
    """The layers that go on the chip: all of `names` but those kept digital, each of which
    must be one of them (MappingError lists the valid names)."""
    unknown = sorted(set(digital_layers) - set(names))
    if unknown:
        raise MappingError(f"no layer named {', '.join(unknown)} to keep digital; layers: {', '.join(names)}")
    analog = set(names) - set(digital_layers)
    if not analog:
        raise MappingError("no layers to map" + (" (every layer is kept digital)" if digital_layers else ""))
    return analog


def map_network(
    layers: list[LayerWeights],
    geometry: Geometry,
    g_max_us: float = 25.0,
    digital_layers: Collection[str] = (),
) -> DeviceMap:
    """Scale, split and place every layer not named in `digital_layers`; return targets and
    addresses in canonical order."""
    analog = analog_names([layer.name for layer in layers], digital_layers)
    digital = tuple(layer.name for layer in layers if layer.name not in analog)
    layers = [layer for layer in layers if layer.name in analog]
    for layer in layers:
        m = layer.matrix
        if m.ndim != 2 or m.size == 0 or not np.isfinite(m).all():
            raise MappingError(f"layer {layer.name!r}: need a finite, non-empty 2-D matrix, got {m.shape}")
    cuts = [
        (li, cut)
        for li, layer in enumerate(layers)
        for cut in _cut(layer.matrix.shape[0], layer.matrix.shape[1], geometry)
    ]
    where = _shelf_pack([(nr, nc) for _, (_, _, nr, nc) in cuts], geometry)

    n_devices = 2 * sum(layer.matrix.size for layer in layers)
    addresses = np.empty(n_devices, np.uint32)
    targets = np.zeros(n_devices, np.float32)
    placements = []
    offset = 0
    for li, layer in enumerate(layers):
        m = np.asarray(layer.matrix, np.float32)
        rows, cols = m.shape
        n = m.size
        peak = float(np.abs(m).max())
        scale = g_max_us / peak if peak > 0 else 1.0
        blocks = tuple(
            Block(r0, c0, nr, nc, *where[key]) for key, (lj, (r0, c0, nr, nc)) in enumerate(cuts) if lj == li
        )
        placement = LayerPlacement(layer.name, (rows, cols), scale, offset, n, blocks)
        _place_addresses(placement, geometry, addresses)
        w = m.ravel()
        # G+ = s·W for W > 0 and G− = −s·W for W < 0; the other device of the pair stays 0 (RESET).
        np.multiply(w, np.float32(scale), out=targets[offset : offset + n], where=w > 0)
        np.multiply(w, np.float32(-scale), out=targets[offset + n : offset + 2 * n], where=w < 0)
        placements.append(placement)
        offset += 2 * n
    return DeviceMap(geometry, g_max_us, tuple(placements), addresses, targets, digital)

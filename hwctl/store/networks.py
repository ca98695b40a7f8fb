"""Stored networks: a network row decoded into its checkpoint, the one way every job and report
does it; and what a network needs of a station (its analog layers against each station's chip)."""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from sqlalchemy import Connection, select

from drivers.base import Geometry
from hwctl.mapping import MappingError, check_placement
from hwctl.nn.conductance import analog_modules, unroll
from hwctl.nn.models import EXPORTED, Checkpoint, load_checkpoint
from hwctl.nn.network_spec import NetworkSpec, network_spec, registered_spec
from hwctl.store.engine import let_go_after
from hwctl.store.errors import NotFoundError
from hwctl.store.schema import networks, stations

if TYPE_CHECKING:
    from torch import nn


def load_network(conn: Connection, network_id: int) -> Checkpoint:
    """The network's checkpoint from its stored bytes or, for a registered file, its path."""
    row = conn.execute(select(networks).where(networks.c.id == network_id)).one_or_none()
    if row is None:
        raise NotFoundError(f"network {network_id} does not exist")
    source = row.checkpoint if row.checkpoint is not None else row.checkpoint_path
    if row.checkpoint is not None:
        let_go_after(conn, len(row.checkpoint))
    return load_checkpoint(source, row.architecture)


@dataclass(frozen=True)
class AnalogLayer:
    """One conv/linear weight as it goes on the chip: a (rows, cols) crossbar matrix."""

    name: str
    shape: tuple[int, int]

    @property
    def n_weights(self) -> int:
        return self.shape[0] * self.shape[1]


@dataclass(frozen=True)
class StationFit:
    station: str
    devices: int  # the chip's devices: tiles × rows × cols
    fits: bool
    reason: str | None  # why not, with the numbers


@dataclass(frozen=True)
class NetworkNeeds:
    """What a network asks of a chip (all layers analog; layers kept digital need fewer)."""

    input_shape: tuple[int, ...]
    layers: list[AnalogLayer]
    stations: list[StationFit]

    @property
    def n_devices(self) -> int:
        return 2 * sum(layer.n_weights for layer in self.layers)  # a differential pair per weight


def station_fit(name: str, geometry: Geometry, layers: list[AnalogLayer]) -> StationFit:
    devices = geometry.tiles * geometry.rows * geometry.cols
    try:
        check_placement([layer.shape for layer in layers], geometry)
    except MappingError as exc:
        needed = 2 * sum(layer.n_weights for layer in layers)
        return StationFit(name, devices, False, f"{needed:,} devices needed, the chip has {devices:,}: {exc}")
    return StationFit(name, devices, True, None)


def analog_layers_of(checkpoint: Checkpoint, model: nn.Module | None = None) -> list[AnalogLayer]:
    """The checkpoint's analog layers, from `model` if it is the checkpoint already built: each
    layer's crossbar matrix (`export_layers`) unrolled and let go in turn, so no more than one
    layer's copy is held (all of them are the checkpoint's size again: 87 MB for ResNet-34)."""
    modules = analog_modules(checkpoint.build() if model is None else model)
    return [AnalogLayer(name, _shape(unroll(module.weight).shape)) for name, module in modules.items()]


def _shape(shape: tuple[int, ...]) -> tuple[int, int]:
    return int(shape[0]), int(shape[1])


def fit_on_station(
    conn: Connection, network_id: int, station_name: str, digital_layers: Collection[str] = ()
) -> StationFit:
    """Whether the network, less the layers kept digital, fits the station's chip: the check
    an experiment's submission makes (its `reason` is the 422's detail when it does not).
    The layer shapes are read once per network content (a submission must stay cheap)."""
    row = conn.execute(select(stations.c.tiles, stations.c.rows, stations.c.cols)
                       .where(stations.c.name == station_name)).one_or_none()  # fmt: skip
    if row is None:
        raise NotFoundError(f"station {station_name!r} does not exist")
    layers = [layer for layer in _stored_analog_layers(conn, network_id) if layer.name not in digital_layers]
    return station_fit(station_name, Geometry(row.tiles, row.rows, row.cols), layers)


def network_needs(conn: Connection, input_shape: tuple[int, ...], layers: list[AnalogLayer]) -> NetworkNeeds:
    """The network's input shape and analog layers (derived by the caller: an upload's before
    its write transaction), and whether it fits each registered station."""
    rows = conn.execute(select(stations.c.name, stations.c.tiles, stations.c.rows, stations.c.cols)
                        .order_by(stations.c.name)).all()  # fmt: skip
    fits = [station_fit(r.name, Geometry(r.tiles, r.rows, r.cols), layers) for r in rows]
    return NetworkNeeds(input_shape, layers, fits)


def stored_network_needs(conn: Connection, network_id: int) -> NetworkNeeds:
    """`network_needs` of a stored network, its analog layers read once per network content
    (as a submission's check reads them) and a registered architecture's input shape from
    the registry: a page showing a network loads and builds its checkpoint (ResNet-34:
    87 MB of bytes, tensors and model each) once, not on every view."""
    input_shape = stored_network_spec(conn, network_id).input_shape
    return network_needs(conn, input_shape, list(_stored_analog_layers(conn, network_id)))


T = TypeVar("T")
KEPT_PER_CACHE = 64  # networks whose derived facts are kept; then the cache starts over
# By the network's sha256: a graph's spec is one forward pass, the analog layers one build.
_GRAPH_SPECS: dict[str, NetworkSpec] = {}
_ANALOG_LAYERS: dict[str, list[AnalogLayer]] = {}


def _per_content(cache: dict[str, T], sha256: str, build: Callable[[], T]) -> T:
    if sha256 not in cache:
        if len(cache) >= KEPT_PER_CACHE:
            cache.clear()
        cache[sha256] = build()
    return cache[sha256]


def _stored_analog_layers(conn: Connection, network_id: int) -> list[AnalogLayer]:
    sha256 = _network_sha256(conn, network_id)
    return _per_content(_ANALOG_LAYERS, sha256, lambda: analog_layers_of(load_network(conn, network_id)))


def derive_network_facts(conn: Connection, network_id: int) -> None:
    """Derive (once per content) what a submission checks of a network: its spec and its
    analog layers. Called on a read connection before the submission's write transaction,
    so the first submission of a network does not read and build its checkpoint (ResNet-34:
    87 MB, then 0.2–0.6 s to build) while holding the database's one writer, which the
    submissions grouped with it share."""
    stored_network_spec(conn, network_id)
    _stored_analog_layers(conn, network_id)


def _network_sha256(conn: Connection, network_id: int) -> str:
    sha256 = conn.execute(select(networks.c.sha256).where(networks.c.id == network_id)).scalar()
    if sha256 is None:
        raise NotFoundError(f"network {network_id} does not exist")
    return str(sha256)


def stored_network_spec(conn: Connection, network_id: int) -> NetworkSpec:
    """`network_spec` of a stored network: a registered architecture's from the registry
    without reading the checkpoint, an uploaded graph's read once per content."""
    row = conn.execute(select(networks.c.architecture, networks.c.sha256)
                       .where(networks.c.id == network_id)).one_or_none()  # fmt: skip
    if row is None:
        raise NotFoundError(f"network {network_id} does not exist")
    if row.architecture != EXPORTED:
        return registered_spec(row.architecture)
    return _per_content(_GRAPH_SPECS, row.sha256, lambda: network_spec(load_network(conn, network_id)))

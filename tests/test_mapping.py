"""Weight mapping and crossbar placement (pcm-model.md §1)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from drivers.base import Geometry
from hwctl.mapping import LayerWeights, MappingError, map_network

GEOMETRY = Geometry(tiles=4, rows=64, cols=32)


def _layers(seed: int = 0) -> list[LayerWeights]:
    rng = np.random.default_rng(seed)
    return [
        LayerWeights("conv", rng.normal(size=(90, 20)).astype(np.float32)),  # cut into 2x2 blocks
        LayerWeights("fc", rng.normal(size=(10, 3)).astype(np.float32)),
    ]


def test_positive_weight_sets_g_plus_and_resets_g_minus_with_one_scale_per_layer() -> None:
    layers = _layers()
    dmap = map_network(layers, GEOMETRY, g_max_us=25.0)
    for layer, placement in zip(layers, dmap.layers, strict=True):
        w = layer.matrix.ravel()
        o, n = placement.offset, placement.n_weights
        scale = 25.0 / np.abs(w).max()
        assert placement.scale_us_per_weight == pytest.approx(scale)
        np.testing.assert_allclose(dmap.target_g_us[o : o + n], np.where(w > 0, w * scale, 0), rtol=1e-6)
        g_minus = dmap.target_g_us[o + n : o + 2 * n]
        np.testing.assert_allclose(g_minus, np.where(w < 0, -w * scale, 0), rtol=1e-6)
    assert dmap.target_g_us.max() == pytest.approx(25.0)


def test_weights_round_trip_exactly_through_conductances() -> None:
    layers = _layers()
    dmap = map_network(layers, GEOMETRY)
    back = dmap.weights_from_g(dmap.target_g_us)
    for layer in layers:
        np.testing.assert_allclose(back[layer.name], layer.matrix, rtol=1e-6, atol=1e-7)


def test_addresses_are_unique_and_pairs_sit_on_neighbouring_bit_lines_of_one_word_line() -> None:
    dmap = map_network(_layers(), GEOMETRY)
    assert np.unique(dmap.addresses).size == dmap.n_devices
    assert int(dmap.addresses.max()) < GEOMETRY.n_devices
    for placement in dmap.layers:
        o, n = placement.offset, placement.n_weights
        np.testing.assert_array_equal(dmap.addresses[o + n : o + 2 * n], dmap.addresses[o : o + n] + 1)
    # Neighbouring weights of one matrix row share a word line within a block.
    info = [dmap.device_info(i) for i in (0, 1)]
    assert (info[0].tile, info[0].row) == (info[1].tile, info[1].row)
    assert info[1].col == info[0].col + 2


def test_blocks_respect_tile_size_and_do_not_overlap() -> None:
    dmap = map_network(_layers(), GEOMETRY)
    used = np.zeros((GEOMETRY.tiles, GEOMETRY.rows, GEOMETRY.cols), int)
    for placement in dmap.layers:
        for b in placement.blocks:
            assert b.row + b.n_rows <= GEOMETRY.rows and b.col + 2 * b.n_cols <= GEOMETRY.cols
            used[b.tile, b.row : b.row + b.n_rows, b.col : b.col + 2 * b.n_cols] += 1
    assert used.max() == 1
    assert used.sum() == dmap.n_devices
    assert dmap.utilisation.tiles_used == len(np.flatnonzero(used.sum(axis=(1, 2))))


def test_device_table_matches_device_info() -> None:
    dmap = map_network(_layers(), GEOMETRY)
    layer_index, weight_index, sign = dmap.device_table()
    for i in (0, 5, 1799, 1800, 3599, 3600, dmap.n_devices - 1):
        info = dmap.device_info(i)
        assert dmap.layers[layer_index[i]].name == info.layer
        assert (weight_index[i], sign[i]) == (info.weight_index, info.sign)


def test_serialization_is_lossless() -> None:
    dmap = map_network(_layers(), GEOMETRY)
    back = type(dmap).from_bytes(dmap.to_bytes())
    assert back.geometry == dmap.geometry and back.layers == dmap.layers
    np.testing.assert_array_equal(back.addresses, dmap.addresses)
    np.testing.assert_array_equal(back.target_g_us, dmap.target_g_us)


def test_a_network_too_large_for_the_chip_is_refused_clearly() -> None:
    big = [LayerWeights("huge", np.ones((600, 100), np.float32))]
    with pytest.raises(MappingError, match="does not fit"):
        map_network(big, GEOMETRY)


def test_zero_weights_reset_both_devices() -> None:
    m = np.array([[0.0, 1.0], [-2.0, 0.0]], np.float32)
    dmap = map_network([LayerWeights("l", m)], GEOMETRY)
    np.testing.assert_allclose(dmap.target_g_us, [0, 12.5, 0, 0, 0, 0, 25.0, 0])


def test_layers_kept_digital_take_no_devices_and_the_map_names_them() -> None:
    layers = _layers()
    dmap = map_network(layers, GEOMETRY, digital_layers={"fc"})
    assert dmap.digital_layers == ("fc",)
    assert [p.name for p in dmap.layers] == ["conv"]
    assert dmap.n_devices == 2 * layers[0].matrix.size
    assert set(dmap.weights_from_g(dmap.target_g_us)) == {"conv"}
    back = type(dmap).from_bytes(dmap.to_bytes())
    assert back.digital_layers == ("fc",) and back.layers == dmap.layers


def test_a_digital_layer_that_does_not_exist_or_no_analog_layer_left_is_refused() -> None:
    with pytest.raises(MappingError, match="no layer named fc2 to keep digital; layers: conv, fc"):
        map_network(_layers(), GEOMETRY, digital_layers=["fc2"])
    with pytest.raises(MappingError, match="every layer is kept digital"):
        map_network(_layers(), GEOMETRY, digital_layers=["conv", "fc"])


def test_a_map_stored_in_the_first_format_loads_with_its_addresses_and_no_digital_layers() -> None:
    dmap = map_network(_layers(), GEOMETRY)
    meta = json.loads(np.load(io.BytesIO(dmap.to_bytes()), allow_pickle=False)["meta"].tobytes().decode())
    del meta["digital_layers"]
    old = io.BytesIO()
    np.savez_compressed(old, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8),
                        addresses=dmap.addresses, target_g_us=dmap.target_g_us)  # fmt: skip
    loaded = type(dmap).from_bytes(old.getvalue())
    assert loaded.digital_layers == () and loaded.layers == dmap.layers
    np.testing.assert_array_equal(loaded.addresses, dmap.addresses)


def test_a_stored_map_holds_the_targets_and_rebuilds_the_addresses_from_its_blocks() -> None:
    dmap = map_network(_layers(), GEOMETRY)
    stored = dmap.to_bytes()
    assert np.load(io.BytesIO(stored), allow_pickle=False).files == ["meta", "target_g_us"]
    assert len(stored) < 4 * dmap.n_devices + 4096  # 4 bytes a device and the placement
    np.testing.assert_array_equal(type(dmap).from_bytes(stored).addresses, dmap.addresses)

"""A readout in long format, one row per device, for people and other tools:
`device, layer, weight_index, sign, t_s, g_us` as CSV or Parquet."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from sqlalchemy import Connection

from hwctl.mapping import DeviceMap
from hwctl.store.errors import StoreError
from hwctl.store.readouts import device_read_times_s, load_programming_result, load_readout

FORMATS = (".csv", ".parquet")


def readout_table(conn: Connection, readout_id: int, device_map: DeviceMap) -> pa.Table:
    """The readout joined with each device's place in the network and its age."""
    readout = load_readout(conn, readout_id)
    programmed_s = load_programming_result(conn, readout.run_id).programmed_s
    if readout.g_us.size != device_map.n_devices:
        raise StoreError(
            f"readout {readout_id} has {readout.g_us.size} devices, the mapping {device_map.n_devices}"
        )
    layer_index, weight_index, sign = device_map.device_table()
    names = pa.array([layer.name for layer in device_map.layers], pa.string())
    return pa.table(
        {
            "device": pa.array(np.arange(readout.g_us.size, dtype=np.int64)),
            "layer": pa.DictionaryArray.from_arrays(pa.array(layer_index), names),
            "weight_index": pa.array(weight_index),
            "sign": pa.array(sign),
            "t_s": pa.array(device_read_times_s(conn, readout_id) - programmed_s),
            "g_us": pa.array(readout.g_us),
        }
    )


def export_readout(conn: Connection, readout_id: int, device_map: DeviceMap, path: Path) -> Path:
    """Write the readout to `path`; the suffix (.csv or .parquet) picks the format."""
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise StoreError(f"cannot export to {path.name!r}: use one of {', '.join(FORMATS)}")
    table = readout_table(conn, readout_id, device_map)
    if suffix == ".csv":
        pa_csv.write_csv(table.cast(_plain_layer(table.schema)), path)
    else:
        pq.write_table(table, path)
    return path


def _plain_layer(schema: pa.Schema) -> pa.Schema:
    """CSV cannot hold dictionary columns: write layer names as plain strings."""
    return schema.set(schema.get_field_index("layer"), pa.field("layer", pa.string()))

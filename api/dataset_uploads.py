"""Turning uploaded bytes into a stored data set: what the data set upload and an
inference's inline batch share (parsed and sized by `hwctl.store.datasets`, stored once by
content hash)."""

from __future__ import annotations

import hashlib
from typing import Literal

from fastapi import HTTPException

from api.deps import Writes
from hwctl.settings import Settings
from hwctl.store import datasets as store_datasets
from hwctl.store.datasets import DatasetError, DatasetTooLargeError


def _numbers(value: str | None, what: str) -> list[float] | None:
    if value is None:
        return None
    try:
        return [float(v) for v in value.replace("[", "").replace("]", "").split(",") if v.strip()]
    except ValueError:
        raise HTTPException(422, f"{what} must be comma-separated numbers, got {value!r}") from None


LayoutForm = Literal["NCHW", "NHWC"] | None


def ingest(
    db_writes: Writes, settings: Settings, data: bytes, name: str, layout: LayoutForm = None,
    mean: str | None = None, std: str | None = None,
) -> tuple[int, bool]:
    """Parse and store an upload (or find the same bytes stored); (id, created). 413/422 if unusable."""
    with db_writes.engine.connect() as db:
        found = store_datasets.dataset_id_for_hash(db, hashlib.sha256(data).hexdigest())
    if found is not None:
        return found, False
    means, stds = _numbers(mean, "mean"), _numbers(std, "std")
    try:
        norm = None
        if means is not None or stds is not None:
            norm = store_datasets.normalisation_from(means or [], stds or [])
        parsed = store_datasets.parse_upload(data, settings.max_upload_expanded_bytes, layout, norm)
    except DatasetTooLargeError as exc:
        raise HTTPException(413, f"{name!r}: {exc}") from None
    except DatasetError as exc:
        raise HTTPException(422, f"{name!r}: {exc}") from None
    except ValueError as exc:  # the shared image checks (InputError)
        raise HTTPException(422, f"{name!r}: {exc}") from None
    with db_writes.transaction() as conn:
        return store_datasets.add_dataset(conn, name, data, parsed)

"""Data sets: upload an image array (.npz or .npy, size-limited, stored once by content hash),
list them, inspect one. The built-in digits and CIFAR-10 test sets are listed too."""

from __future__ import annotations

from pathlib import PurePath
from typing import Annotated

from fastapi import APIRouter, File, Form, Response, UploadFile

from api.dataset_uploads import LayoutForm, ingest
from api.deps import Db, ReadAccess, SettingsDep, WriteAccess, WritesDep
from api.pagination import Page, Paging
from api.params import PathId
from api.problems import problem_responses
from api.schemas.datasets import Dataset, NormalisationModel
from api.uploads import read_bounded
from hwctl.store import datasets as store_datasets
from hwctl.store.datasets import DatasetInfo

router = APIRouter(prefix="/datasets", tags=["datasets"])


def dataset_out(info: DatasetInfo) -> Dataset:
    norm = info.normalisation
    return Dataset(
        id=info.id, name=info.name, builtin=info.builtin, split=info.split, sha256=info.sha256,
        size_bytes=info.size_bytes, n_images=info.n_images, image_shape=list(info.image_shape),
        dtype=info.dtype, layout=info.layout, labelled=info.n_classes is not None, n_classes=info.n_classes,
        normalisation=None if norm is None else NormalisationModel(mean=list(norm.mean), std=list(norm.std)),
        created_at=info.created_at,
    )  # fmt: skip


@router.post(
    "", status_code=201, response_model=Dataset, dependencies=[WriteAccess],
    responses={200: {"description": "the same bytes were already stored: that data set",
                     "model": Dataset}, **problem_responses(401, 403, 413, 422)},
)  # fmt: skip
def upload_dataset(
    db: Db,
    writes: WritesDep,
    settings: SettingsDep,
    response: Response,
    file: Annotated[UploadFile, File(description=".npz with x (uint8/float32, NCHW or NHWC), optional y, "
                                                 "mean, std; or a .npy of images")],
    name: Annotated[str | None, Form(max_length=128)] = None,
    layout: Annotated[LayoutForm, Form(description="default: the axis with ≤ 4 entries is channels")] = None,
    mean: Annotated[str | None, Form(max_length=200, description="per channel, e.g. 0.49,0.48,0.45")] = None,
    std: Annotated[str | None, Form(max_length=200, description="per channel, e.g. 0.25,0.24,0.26")] = None,
) -> Dataset:
    """Store an image set once: uploading the same bytes again answers 200 with the stored one."""
    data = read_bounded(file, settings.max_upload_bytes, "data set")
    label = name or PurePath(file.filename or "upload").stem or "upload"
    dataset_id, created = ingest(writes, settings, data, label, layout, mean, std)
    response.status_code = 201 if created else 200
    response.headers["Location"] = f"/datasets/{dataset_id}"
    return dataset_out(store_datasets.get_dataset(db, dataset_id))


@router.get("", response_model=Page[Dataset], dependencies=[ReadAccess])
def list_datasets(db: Db, page: Paging) -> Page[Dataset]:
    items, total = store_datasets.list_datasets(db, page.limit, page.offset)
    return Page(items=[dataset_out(i) for i in items], total=total, limit=page.limit, offset=page.offset)


@router.get(
    "/{dataset_id}", response_model=Dataset, dependencies=[ReadAccess], responses=problem_responses(404)
)
def get_dataset(dataset_id: PathId, db: Db) -> Dataset:
    return dataset_out(store_datasets.get_dataset(db, dataset_id))

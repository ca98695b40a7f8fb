"""Data sets as resources: uploaded image arrays stored once by content hash, and the
built-in sets (digits, CIFAR-10) resolved by name; and the images an evaluation takes
(`load_evaluation_images`: its test set and calibration set, by id or built-in name).

An upload is a `.npz` (members `x`, optional `y`, optional per-channel `mean` and `std`)
or a bare `.npy` of images. It is sized before it is opened: the bytes against the upload
bound, the archive's declared member sizes against the expansion bound
(`hwctl.uploads.check_archive`, from the central directory, inflating nothing), a `.npy`
header's shape × itemsize likewise; arrays load with `allow_pickle=False`, so an object
array is refused, never unpickled. The parsed images are checked
(`hwctl.inference.inputs`): uint8 or float32, 4-D, finite.
"""

from __future__ import annotations

import hashlib
import io
import math
import zipfile
from dataclasses import dataclass
from typing import IO, Any, Literal

import numpy as np
from sqlalchemy import Connection, Row, func, insert, select

from hwctl.experiment_spec import EvaluationSpec
from hwctl.inference.inputs import (
    InputError,
    Inputs,
    Layout,
    Normalisation,
    check_images,
    check_labels,
    infer_layout,
)
from hwctl.nn.calibration import needs_calibration
from hwctl.nn.data import ImageSet, load_dataset
from hwctl.nn.evaluation import Images, calibration_set
from hwctl.settings import get_settings
from hwctl.store.engine import let_go_after
from hwctl.store.errors import NotFoundError
from hwctl.store.schema import datasets
from hwctl.uploads import ArchiveTooLargeError, check_archive

NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"
NPZ_MEMBERS = ("x", "y", "mean", "std")
MAX_LABEL = 1_000_000  # classes; a label beyond it is a mistake, not a class


class DatasetError(InputError):
    """The upload is not a usable image set (format, members, dtype, shape or values)."""


class DatasetTooLargeError(DatasetError):
    """The upload, or what it would expand to, exceeds the bound this service accepts."""


@dataclass(frozen=True)
class ParsedDataset:
    """An upload, checked: its images with their labels and normalisation."""

    inputs: Inputs
    sha256: str
    size_bytes: int

    @property
    def n_classes(self) -> int | None:
        y = self.inputs.y
        return None if y is None else int(y.max()) + 1


def parse_upload(data: bytes, max_expanded_bytes: int, layout: Layout | None = None,
                 normalisation: Normalisation | None = None) -> ParsedDataset:  # fmt: skip
    """The upload's images, labels and normalisation, or a DatasetError saying what is wrong.

    `layout` None: the channels (≤ 4) are found on axis 1 (NCHW) or on the last (NHWC).
    A normalisation given here overrides one stored in the archive.
    """
    if data.startswith(NPY_MAGIC):
        x, y, stored = _npy(data, max_expanded_bytes), None, None
    elif data.startswith(ZIP_MAGIC):
        x, y, stored = _npz(data, max_expanded_bytes)
    else:
        raise DatasetError("not a NumPy .npz or .npy file (it starts with neither PK nor \\x93NUMPY)")
    if x.ndim != 4:
        raise DatasetError(f"images x must be a 4-D array (NCHW or NHWC), got shape {list(x.shape)}")
    chosen = layout or infer_layout(x.shape)
    check_images(x, chosen)
    if y is not None:
        if y.dtype.kind not in "iu":
            raise DatasetError(f"labels y must be integers, got {y.dtype}")
        check_labels(y, len(x))
        if y.size and int(y.max()) >= MAX_LABEL:
            raise DatasetError(f"labels must be < {MAX_LABEL}, got {int(y.max())}")
        y = y.astype(np.int64)
    inputs = Inputs(x, chosen, y, normalisation or stored)
    if inputs.normalisation is not None and len(inputs.normalisation.mean) != inputs.image_shape[0]:
        raise DatasetError(f"normalisation has {len(inputs.normalisation.mean)} channel(s), "
                           f"the images {inputs.image_shape[0]}")  # fmt: skip
    return ParsedDataset(inputs, hashlib.sha256(data).hexdigest(), len(data))


def _npy(data: bytes, max_expanded_bytes: int) -> np.ndarray:
    _declared_bytes(io.BytesIO(data), max_expanded_bytes)
    return _load(data)


def _declared_bytes(stream: IO[bytes], max_expanded_bytes: int) -> int:
    """The bytes an .npy header declares, refused past the bound: numpy allocates the
    declared shape before reading, whatever few bytes actually follow."""
    headers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    try:
        version = np.lib.format.read_magic(stream)
        if version not in headers:
            raise ValueError(f"version {version} is not supported (1.0 and 2.0 are)")
        shape, _, dtype = headers[version](stream)
    except (ValueError, EOFError) as exc:
        raise DatasetError(f"unreadable .npy header: {exc}") from None
    if dtype.hasobject:
        raise DatasetError("object arrays are refused (loading them would unpickle)")
    expanded = math.prod(shape) * dtype.itemsize  # Python ints: no int64 wrap-around
    if expanded > max_expanded_bytes:
        raise DatasetTooLargeError(
            f"the array holds {expanded} bytes; at most {max_expanded_bytes} are accepted"
        )
    return expanded


def _npz(data: bytes, max_expanded_bytes: int) -> tuple[np.ndarray, np.ndarray | None, Normalisation | None]:
    try:
        if check_archive(data, max_expanded_bytes) is None:
            raise DatasetError("a truncated .npz: no ZIP central directory")
    except ArchiveTooLargeError as exc:
        raise DatasetTooLargeError(str(exc)) from None
    try:
        names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    except (zipfile.BadZipFile, ValueError) as exc:
        raise DatasetError(f"not a readable .npz: {exc}") from None
    members = [n.removesuffix(".npy") for n in names]
    unknown = sorted(set(members) - set(NPZ_MEMBERS))
    if unknown or "x" not in members:
        raise DatasetError(f"a data set .npz holds x (images) and optionally y, mean, std; "
                           f"this one holds {', '.join(members) or 'nothing'}")  # fmt: skip
    declared = 0
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            for name in names:
                with archive.open(name) as member:
                    declared += _declared_bytes(member, max_expanded_bytes - declared)
    except (OSError, zipfile.BadZipFile, EOFError, NotImplementedError, RuntimeError) as exc:
        # zipfile: NotImplementedError for an unknown compression method, RuntimeError for
        # an encrypted member; both are the upload's fault, not the server's.
        raise DatasetError(f"unreadable .npz member: {exc}") from None
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in members}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DatasetError(f"unreadable .npz member: {exc}") from None
    stored = None
    if "mean" in arrays or "std" in arrays:
        if not ("mean" in arrays and "std" in arrays):
            raise DatasetError("give both mean and std, or neither")
        stored = normalisation_from(arrays["mean"].tolist(), arrays["std"].tolist())
    return arrays["x"], arrays.get("y"), stored


def _load(data: bytes) -> np.ndarray:
    try:
        array: np.ndarray = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DatasetError(f"unreadable .npy: {exc}") from None
    return array


def normalisation_from(mean: Any, std: Any) -> Normalisation:
    """Per-channel mean and std from lists of numbers; a DatasetError if they are not."""
    try:
        norm = Normalisation(
            tuple(float(v) for v in np.atleast_1d(mean)), tuple(float(v) for v in np.atleast_1d(std))
        )
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"bad normalisation: {exc}") from None
    # Applied in float32 (`Inputs.batch`): a std below its smallest normal number divides to
    # inf (NaN images), one above its largest is inf (zero images). Checked on upload only,
    # so a data set stored before this check still loads.
    tiny, largest = float(np.finfo(np.float32).tiny), float(np.finfo(np.float32).max)
    if min(norm.std) < tiny or max(norm.std) > largest or max(map(abs, norm.mean)) > largest:
        raise DatasetError(f"bad normalisation: mean and std must be float32 numbers, std ≥ {tiny:.3g}; "
                           f"got mean {list(norm.mean)}, std {list(norm.std)}")  # fmt: skip
    return norm


# -- the store -----------------------------------------------------------------------------
@dataclass(frozen=True)
class DatasetInfo:
    """A stored data set without its bytes."""

    id: int
    name: str
    builtin: str | None
    split: str | None
    sha256: str
    size_bytes: int
    n_images: int
    image_shape: tuple[int, int, int]  # (channels, height, width)
    dtype: str
    layout: Layout
    n_classes: int | None
    normalisation: Normalisation | None
    created_at: Any

    @classmethod
    def from_row(cls, row: Row[Any]) -> DatasetInfo:
        norm = row.normalisation
        return cls(
            id=row.id, name=row.name, builtin=row.builtin, split=row.split, sha256=row.sha256,
            size_bytes=row.size_bytes, n_images=row.n_images,
            image_shape=(row.channels, row.height, row.width),
            dtype=row.dtype, layout=row.layout, n_classes=row.n_classes,
            normalisation=None if norm is None else Normalisation(tuple(norm["mean"]), tuple(norm["std"])),
            created_at=row.created_at,
        )  # fmt: skip


_INFO_COLUMNS = [c for c in datasets.c if c.name != "content"]


def add_dataset(conn: Connection, name: str, content: bytes, parsed: ParsedDataset) -> tuple[int, bool]:
    """The data set's id, stored now unless the same bytes already are; (id, created)."""
    found = conn.execute(select(datasets.c.id).where(datasets.c.sha256 == parsed.sha256)).scalar()
    if found is not None:
        return int(found), False
    inputs = parsed.inputs
    channels, height, width = inputs.image_shape
    norm = inputs.normalisation
    new_id = conn.execute(
        insert(datasets).returning(datasets.c.id),
        dict(
            name=name, sha256=parsed.sha256, content=content, size_bytes=parsed.size_bytes,
            n_images=len(inputs), channels=channels, height=height, width=width, dtype=str(inputs.x.dtype),
            layout=inputs.layout, n_classes=parsed.n_classes,
            normalisation=None if norm is None else {"mean": list(norm.mean), "std": list(norm.std)},
        ),
    ).scalar_one()  # fmt: skip
    let_go_after(conn, len(content))
    return int(new_id), True


def dataset_id_for_hash(conn: Connection, sha256: str) -> int | None:
    found = conn.execute(select(datasets.c.id).where(datasets.c.sha256 == sha256)).scalar()
    return None if found is None else int(found)


def get_dataset(conn: Connection, dataset_id: int) -> DatasetInfo:
    row = conn.execute(select(*_INFO_COLUMNS).where(datasets.c.id == dataset_id)).one_or_none()
    if row is None:
        raise NotFoundError(f"data set {dataset_id} does not exist; GET /datasets lists them")
    return DatasetInfo.from_row(row)


def list_datasets(conn: Connection, limit: int, offset: int) -> tuple[list[DatasetInfo], int]:
    """A page of data sets, oldest first (the built-ins lead), and how many there are."""
    total = int(conn.execute(select(func.count()).select_from(datasets)).scalar_one())
    rows = conn.execute(select(*_INFO_COLUMNS).order_by(datasets.c.id).limit(limit).offset(offset))
    return [DatasetInfo.from_row(r) for r in rows], total


def load_inputs(conn: Connection, dataset_id: int, max_expanded_bytes: int) -> Inputs:
    """The data set's images and labels, ready to run: a built-in one from its files."""
    info = get_dataset(conn, dataset_id)
    if info.builtin is not None:
        return Inputs.from_image_set(load_dataset(info.builtin, info.split or "test"), info.normalisation)
    content = conn.execute(select(datasets.c.content).where(datasets.c.id == dataset_id)).scalar_one()
    let_go_after(conn, len(content))
    layout: Layout = info.layout
    return parse_upload(bytes(content), max_expanded_bytes, layout).inputs


def builtin_dataset_id(conn: Connection, name: str, split: str = "test") -> int:
    """The id under which a built-in set is registered (migrations 0007: test splits, 0011: training)."""
    found = dataset_id_for_hash(conn, f"builtin:{name}:{split}")
    if found is None:
        raise NotFoundError(f"the built-in {name} {split} set is not registered; GET /datasets lists them")
    return found


# -- what an evaluation takes --------------------------------------------------------------
DatasetRef = int | str  # a stored data set's id, or a built-in's name (specs stored before ids)
Role = Literal["test", "calibration"]
# Calibration images taken from an uploaded (or built-in test) set when the experiment does
# not say: the paper's AdaBS set size; a smaller set is used whole.
CALIBRATION_IMAGES_DEFAULT = 2_600


def evaluation_refs(evaluation: EvaluationSpec) -> tuple[DatasetRef, DatasetRef | None]:
    """The test set and calibration set of a stored evaluation. A spec stored before data set
    ids names a built-in, whose training split calibrates; None: no calibration set."""
    test = evaluation.test_dataset_id or evaluation.dataset
    if test is None:
        raise ValueError("the evaluation names no test set")
    return test, evaluation.calibration_dataset_id or evaluation.dataset


def inference_calibration_ref(evaluation: EvaluationSpec, network_dataset: str | None) -> DatasetRef | None:
    """Where an inference's calibration images come from: its experiment's calibration set,
    else the network's own built-in (its training split); None: nowhere."""
    return evaluation_refs(evaluation)[1] or network_dataset


def evaluation_test_images(conn: Connection | None, evaluation: EvaluationSpec) -> Images:
    """The evaluation's `n_images` test images (`load_evaluation_images`)."""
    return load_evaluation_images(conn, evaluation_refs(evaluation)[0], "test", evaluation.n_images)


def evaluation_calibration_images(conn: Connection | None, evaluation: EvaluationSpec) -> Images | None:
    """The evaluation's `calibration_images` calibration images, or None when neither AdaBS
    nor its GDC statistic takes any (`needs_calibration`)."""
    if not needs_calibration(evaluation.methods, evaluation.gdc_statistic):
        return None
    ref = evaluation_refs(evaluation)[1]
    if ref is None:
        raise ValueError("the evaluation needs calibration images and names no calibration set")
    return load_evaluation_images(conn, ref, "calibration", evaluation.calibration_images)


def load_evaluation_images(
    conn: Connection | None, ref: DatasetRef, role: Role, n_images: int | None = None, seed: int = 0
) -> Images:
    """The images an evaluation takes as its test or calibration set: the one way the evaluate
    job, the report's forecast and `hwctl evaluate` load them (`conn` None: built-ins only).

    A built-in by name: its test split, or to calibrate its training split as
    `calibration_set` prepares it (CIFAR-10 augmented: our networks' batch-norm statistics
    were learned on augmented images). A stored built-in: the same, for its registered split.
    An uploaded set: as stored, normalised by its own mean/std (the network's if it has none)
    and never augmented: its images are what the lab chose, and augmentation belongs to a
    training recipe we do not know. `n_images` picks a fixed subset (seed 0); a calibration
    set without it takes up to CALIBRATION_IMAGES_DEFAULT. A test set must be labelled.
    """
    if isinstance(ref, str):
        return _builtin_images(ref, "train" if role == "calibration" else "test", role, n_images, seed)
    if conn is None:
        raise ValueError(f"data set {ref} is stored in the database: give its URL")
    info = get_dataset(conn, ref)
    if info.builtin is not None:
        return _builtin_images(info.builtin, info.split or "test", role, n_images, seed)
    if role == "test" and info.n_classes is None:
        raise DatasetError(f"data set {ref} has no labels (y): a test set needs them")
    inputs = load_inputs(conn, ref, get_settings().max_upload_expanded_bytes)
    return _subset(inputs, n_images if role == "test" else n_images or CALIBRATION_IMAGES_DEFAULT, seed)


def _builtin_images(name: str, split: str, role: Role, n_images: int | None, seed: int) -> ImageSet:
    images = load_dataset(name, split)
    if role == "calibration" and split == "train":
        return calibration_set(images, name, n_images, seed)
    return images.subset(n_images if role == "test" else n_images or CALIBRATION_IMAGES_DEFAULT, seed)


def _subset(inputs: Inputs, n_images: int | None, seed: int) -> Inputs:
    """A fixed random subset of `n_images`, picked as `ImageSet.subset` picks (all if None)."""
    if n_images is None or n_images >= len(inputs):
        return inputs
    idx = np.sort(np.random.default_rng(seed).choice(len(inputs), n_images, replace=False))
    y = None if inputs.y is None else inputs.y[idx]
    return Inputs(inputs.x[idx], inputs.layout, y, inputs.normalisation)

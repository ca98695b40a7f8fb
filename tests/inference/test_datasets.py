"""Uploaded data sets are sized before they are opened and parsed without unpickling; any
bytes at all give a data set or an InputError (a DatasetError is one), nothing else."""

from __future__ import annotations

import contextlib
import io
import zipfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hwctl.inference.inputs import InputError
from hwctl.store.datasets import DatasetError, DatasetTooLargeError, parse_upload
from tests.inference.conftest import npz_bytes

BOUND = 1 << 20


def test_an_npz_that_would_inflate_past_the_bound_is_refused_before_loading() -> None:
    bomb = npz_bytes(x=np.zeros((64, 3, 64, 64), np.float32))  # 3 MiB of zeros, a few kB deflated
    assert len(bomb) < 64 * 1024
    with pytest.raises(DatasetTooLargeError, match="expand"):
        parse_upload(bomb, BOUND)


def test_an_npy_header_declaring_more_than_the_bound_is_refused() -> None:
    buffer = io.BytesIO()
    header = {"descr": "<f4", "fortran_order": False, "shape": (10**6, 3, 8, 8)}
    np.lib.format.write_array_header_1_0(buffer, header)
    with pytest.raises(DatasetTooLargeError, match="at most"):
        parse_upload(buffer.getvalue() + b"\0" * 16, BOUND)


def test_an_npz_member_whose_header_declares_more_than_the_bound_is_refused_before_loading() -> None:
    """A few stored bytes whose .npy header declares 300 GB: numpy would allocate the
    declared size on load (a MemoryError, a 500), so the member headers are sized first."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False,
                                                  "shape": (10**8, 3, 32, 32)})  # fmt: skip
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("x.npy", header.getvalue() + b"\0" * 100)
    with pytest.raises(DatasetTooLargeError, match="at most"):
        parse_upload(buffer.getvalue(), BOUND)


@pytest.mark.parametrize(
    ("local", "central", "value"), [(8, 10, 99), (6, 8, 1)], ids=["method-99", "encrypted"]
)
def test_an_npz_member_zipfile_cannot_open_is_an_input_error(local: int, central: int, value: int) -> None:
    """An unknown compression method or the encryption flag: zipfile raises
    NotImplementedError or RuntimeError, neither of them a ValueError."""
    data = bytearray(npz_bytes(x=np.zeros((2, 1, 8, 8), np.uint8)))
    for signature, at in ((b"PK\x03\x04", local), (b"PK\x01\x02", central)):
        start = data.find(signature) + at
        data[start : start + 2] = value.to_bytes(2, "little")
    with pytest.raises(DatasetError, match=r"unreadable \.npz member"):
        parse_upload(bytes(data), BOUND)


def test_layout_labels_and_normalisation_are_read_from_the_archive() -> None:
    x = np.random.default_rng(0).integers(0, 255, (5, 8, 8, 3), dtype=np.uint8)
    parsed = parse_upload(npz_bytes(x=x, y=np.arange(5), mean=np.full(3, 0.5), std=np.full(3, 0.25)), BOUND)
    assert parsed.inputs.layout == "NHWC" and parsed.inputs.image_shape == (3, 8, 8)
    assert parsed.n_classes == 5 and parsed.inputs.normalisation is not None
    assert parsed.inputs.normalisation.std == (0.25, 0.25, 0.25)
    with pytest.raises(DatasetError, match="channel"):
        parse_upload(npz_bytes(x=x, mean=np.zeros(1), std=np.ones(1)), BOUND)
    with pytest.raises(DatasetError, match="both mean and std"):
        parse_upload(npz_bytes(x=x, mean=np.zeros(3)), BOUND)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_any_bytes_give_a_data_set_or_an_input_error(data: bytes) -> None:
    with contextlib.suppress(InputError):  # DatasetError is one
        parse_upload(data, BOUND)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=512), st.sampled_from(["x.npy", "y.npy", "x", "other.npy"]))
def test_any_archive_member_gives_a_data_set_or_an_input_error(member: bytes, name: str) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(name, np.lib.format.MAGIC_PREFIX + member)
    with contextlib.suppress(InputError):
        parse_upload(buffer.getvalue(), BOUND)


@pytest.mark.parametrize(("mean", "std"), [(0.0, 1e-320), (0.0, 1e-40), (0.0, 1e300), (1e300, 1.0)])
def test_a_normalisation_float32_cannot_hold_is_refused(mean: float, std: float) -> None:
    """Images are normalised in float32: a std of 1e-320 is 0 there (every value NaN), 1e300
    is infinite (every value 0); the upload was stored and every evaluation on it was NaN."""
    x = np.zeros((2, 1, 8, 8), np.uint8)
    with pytest.raises(InputError, match="float32"):
        parse_upload(npz_bytes(x=x, mean=np.array([mean]), std=np.array([std])), BOUND)

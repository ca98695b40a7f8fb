"""`hwctl evaluate --test-dataset ID` loads a stored data set as the evaluate job does: the
digits test images uploaded (uint8 NHWC, or float32 NCHW in [0, 1]) score exactly what the
built-in set scores, in either layout and dtype."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from hwctl.cli import main
from hwctl.nn.chip_readout import simulate_readouts
from hwctl.nn.data import ImageSet
from hwctl.nn.models import Checkpoint, save_checkpoint
from hwctl.store.datasets import add_dataset, parse_upload
from hwctl.store.engine import connect, make_engine
from tests.api.conftest import migrated_sqlite_url


def _npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


def _accuracy(capsys: pytest.CaptureFixture[str], argv: list[str]) -> float:
    assert main(argv) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["n_images"] == 449
    return float(line["accuracy"])


def test_an_uploaded_copy_of_the_test_set_scores_what_the_built_in_scores(
    tmp_path: Path, digits_checkpoint: Checkpoint, digits_test: ImageSet, capsys: pytest.CaptureFixture[str]
) -> None:
    url = migrated_sqlite_url(tmp_path)
    uploads = {
        "uint8 NHWC": _npz(x=digits_test.x, y=digits_test.y),
        "float32 NCHW": _npz(x=(digits_test.x.transpose(0, 3, 1, 2) / np.float32(255)).astype(np.float32),
                             y=digits_test.y),
    }  # fmt: skip
    engine = make_engine(url)
    with connect(engine, begin=True) as conn:
        ids = {
            name: add_dataset(conn, name, data, parse_upload(data, 1 << 24))[0]
            for name, data in uploads.items()
        }
    engine.dispose()
    ckpt_path = tmp_path / "digits.pt"
    save_checkpoint(ckpt_path, "digits-resnet", digits_checkpoint.build(), digits_checkpoint.meta)
    np.save(
        tmp_path / "g.npy", simulate_readouts(digits_checkpoint.build(), [25.0], seed=3).g_us_by_time_s[25.0]
    )
    argv = ["evaluate", str(ckpt_path), "--readout", str(tmp_path / "g.npy"), "--method", "none"]

    built_in = _accuracy(capsys, argv)
    for dataset_id in ids.values():
        assert (
            _accuracy(capsys, [*argv, "--test-dataset", str(dataset_id), "--database-url", url]) == built_in
        )
    assert main([*argv, "--test-dataset", "999", "--database-url", url]) == 2
    assert "does not exist" in capsys.readouterr().err

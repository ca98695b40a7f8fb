from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hwctl.cli import main
from hwctl.nn.chip_readout import simulate_readouts
from hwctl.nn.data import ImageSet, Normalizer
from hwctl.nn.evaluation import ReadoutEvaluator, calibration_set, wilson_interval_pct
from hwctl.nn.inference import accuracy_pct
from hwctl.nn.models import Checkpoint, save_checkpoint
from hwctl.vocabulary import CompensationMethod

YEAR_S = 365 * 86400.0


def test_wilson_interval_matches_the_textbook_value() -> None:
    low, high = wilson_interval_pct(50, 100)
    assert (round(low, 1), round(high, 1)) == (40.4, 59.6)
    low, high = wilson_interval_pct(100, 100)
    assert high == 100.0 and 96.0 < low < 96.5


@pytest.fixture(scope="module")
def digits_readouts(digits_checkpoint: Checkpoint):  # type: ignore[no-untyped-def]
    return simulate_readouts(digits_checkpoint.build(), [25.0, YEAR_S], seed=3)


def test_noise_trained_digits_survive_programming_and_adabs_beats_no_compensation_after_a_year(
    digits_checkpoint: Checkpoint, digits_test: ImageSet, digits_train: ImageSet, digits_readouts
) -> None:  # type: ignore[no-untyped-def]
    fp = accuracy_pct(digits_checkpoint.build(), digits_test, Normalizer("digits-resnet"))
    evaluator = ReadoutEvaluator(digits_checkpoint, digits_readouts.device_map,
                                 calibration_set(digits_train, "digits"))  # fmt: skip
    g = digits_readouts.g_us_by_time_s
    at_t0 = evaluator.evaluate(digits_test, g[25.0], "none")
    assert at_t0.accuracy > fp - 3.0
    assert at_t0.ci95_low < at_t0.accuracy < at_t0.ci95_high
    year = {m: evaluator.evaluate(digits_test, g[YEAR_S], m, g[25.0]).accuracy for m in CompensationMethod}
    assert year["adabs"] > fp - 5.0
    assert year["adabs"] >= year["none"]
    assert year["gdc"] >= year["none"] - 1.0


def test_cli_evaluates_a_readout_file(
    tmp_path: Path, digits_checkpoint: Checkpoint, digits_readouts, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    ckpt_path = tmp_path / "digits.pt"
    save_checkpoint(ckpt_path, "digits-resnet", digits_checkpoint.build(), digits_checkpoint.meta)
    np.save(tmp_path / "g.npy", digits_readouts.g_us_by_time_s[25.0])
    assert main(["evaluate", str(ckpt_path), "--readout", str(tmp_path / "g.npy"), "--method", "none"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["method"] == "none" and line["n_images"] == 449 and line["accuracy"] > 90.0


def test_cli_refuses_gdc_without_a_reference_readout(
    tmp_path: Path, digits_checkpoint: Checkpoint, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt_path = tmp_path / "digits.pt"
    save_checkpoint(ckpt_path, "digits-resnet", digits_checkpoint.build(), digits_checkpoint.meta)
    np.save(tmp_path / "g.npy", np.zeros(10, np.float32))
    assert main(["evaluate", str(ckpt_path), "--readout", str(tmp_path / "g.npy"), "--method", "gdc"]) == 2
    assert "readout-t0" in capsys.readouterr().err

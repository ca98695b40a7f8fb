"""`hwctl train` on the command line: η measured on the lab's chip (--noise-from), cheap imports."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import Engine

from hwctl.cli import main
from hwctl.embedded_chip import SimChipOptions, start_embedded_chip
from hwctl.nn.models import load_checkpoint
from hwctl.nn.recipe import TrainRecipe
from hwctl.report import training_noise_eta
from hwctl.store.engine import make_engine
from hwctl.store.migrate import upgrade
from hwctl.worker import Worker
from tests.service.conftest import SMALL_CHIP, create_campaign
from tests.service.test_campaign import run_until_idle

TINY_TRAINING = ["--model", "digits-resnet", "--epochs", "1", "--max-train-images", "64",
                 "--batch-size", "32", "--no-progress", "--threads", "1"]  # fmt: skip


@dataclass(frozen=True)
class FinishedCampaign:
    url: str
    engine: Engine
    experiment_id: int


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FinishedCampaign]:
    """A digits network programmed and read back 4 times over 24 h on a virtual-time chip, in SQLite."""
    url = f"sqlite:///{tmp_path_factory.mktemp('noise-from') / 'hwctl.sqlite'}"
    engine = make_engine(url)
    upgrade(engine)
    chip = start_embedded_chip(SimChipOptions(virtual=True, geometry=SMALL_CHIP, seed=5))
    try:
        campaign = create_campaign(engine, chip.resource, points=4)
        run_until_idle(Worker(engine, campaign.station), engine, timeout_s=120.0)
    finally:
        chip.stop()
    yield FinishedCampaign(url, engine, campaign.experiment_id)
    engine.dispose()


def test_noise_from_trains_with_the_eta_measured_on_that_experiments_chip_and_records_it(
    finished: FinishedCampaign, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "chip-aware.pt"
    code = main(["train", *TINY_TRAINING, "--out", str(out),
                 "--noise-from", str(finished.experiment_id), "--database-url", finished.url])  # fmt: skip
    assert code == 0
    measured = training_noise_eta(finished.engine, finished.experiment_id)
    assert measured != TrainRecipe.eta  # the chip's, not the default
    recipe = load_checkpoint(out).meta["recipe"]
    assert recipe["eta"] == measured
    assert recipe["eta_from_experiment"] == finished.experiment_id
    printed = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert (printed["eta"], printed["eta_from_experiment"]) == (measured, finished.experiment_id)


def test_noise_from_an_unknown_experiment_is_a_cli_error_and_writes_nothing(
    finished: FinishedCampaign, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "never.pt"
    code = main(["train", *TINY_TRAINING, "--out", str(out),
                 "--noise-from", "424242", "--database-url", finished.url])  # fmt: skip
    assert code == 2
    assert "experiment 424242 does not exist" in capsys.readouterr().err
    assert not out.exists()


def test_eta_and_noise_from_are_mutually_exclusive(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["train", *TINY_TRAINING, "--out", str(tmp_path / "x.pt"), "--eta", "0.02", "--noise-from", "1"])
    assert exit_info.value.code == 2
    assert "--noise-from: not allowed with argument --eta" in capsys.readouterr().err


def test_a_hand_chosen_eta_is_recorded_as_not_measured(tmp_path: Path) -> None:
    out = tmp_path / "hand.pt"
    assert main(["train", *TINY_TRAINING, "--out", str(out), "--eta", "0.02"]) == 0
    recipe = load_checkpoint(out).meta["recipe"]
    assert (recipe["eta"], recipe["eta_from_experiment"]) == (0.02, None)


def test_chip_shaped_noise_is_recorded_in_place_of_eta(tmp_path: Path) -> None:
    out = tmp_path / "pcm.pt"
    assert main(["train", *TINY_TRAINING, "--out", str(out), "--pcm-noise", "1.25"]) == 0
    recipe = load_checkpoint(out).meta["recipe"]
    assert (recipe["eta"], recipe["pcm_noise"]) == (None, 1.25)


@pytest.mark.parametrize("factor", ["0", "-1", "nan", "inf", "11"])
def test_a_chip_noise_factor_out_of_range_is_a_message(
    factor: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "never.pt"
    assert main(["train", *TINY_TRAINING, "--out", str(out), "--pcm-noise", factor]) == 2
    assert "--pcm-noise is a factor in (0, 10]" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("module", ["hwctl.commands.train", "hwctl.commands.evaluate"])
def test_registering_the_network_commands_does_not_import_torch(module: str) -> None:
    """`hwctl --help` and every other sub-command must not pay for loading torch."""
    probe = f"import sys, argparse, {module} as m; m.register(argparse.ArgumentParser().add_subparsers()); "
    probe += "print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--eta", "nan"), ("--eta", "-0.1"), ("--epochs", "-1"), ("--epochs", "nan"), ("--lr", "inf"),
     ("--alpha", "nan"), ("--weight-decay", "-1"), ("--batch-size", "0")],
)  # fmt: skip
def test_a_training_number_out_of_range_is_a_message_and_writes_nothing(
    flag: str, value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--eta nan trained on NaN noise and wrote a checkpoint at chance accuracy; --epochs -1
    trained a fraction of an epoch."""
    out = tmp_path / "never.pt"
    assert main(["train", *TINY_TRAINING, "--out", str(out), flag, value]) == 2
    assert flag in capsys.readouterr().err
    assert not out.exists()

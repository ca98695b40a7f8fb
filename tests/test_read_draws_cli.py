"""`hwctl experiment run --reads-per-point N` against a live API: N reads at each time, the
table giving their mean ± standard deviation; an N out of range is the API's message."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hwctl.cli import main
from tests.api.conftest import API_KEY
from tests.test_experiment_cli import STATION, api_url, checkpoint  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def test_three_reads_per_point_print_their_mean_and_spread(
    api_url: str,  # noqa: F811
    checkpoint: Path,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    api = ["--api", api_url, "--api-key", API_KEY]
    code = main(["experiment", "run", "--network", str(checkpoint), "--station", STATION,
                 "--offsets", "25,600", "--reads-per-point", "3", "--methods", "none,gdc", "--n-images", "60",
                 *api])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    cell = r"[\d.]+ ± [\d.]+"
    assert re.search(rf"^25 s\s+25 s\s+{cell}\s+{cell}$", out, re.M), out
    assert re.search(rf"^10 min\s+10 min\s+{cell}\s+{cell}$", out, re.M), out
    assert main(["experiment", "show", "1", *api]) == 0
    assert "readouts 6/6" in capsys.readouterr().out


@pytest.mark.parametrize("reads", ["0", "17"])
def test_reads_per_point_out_of_range_is_a_message_naming_it(
    api_url: str,  # noqa: F811
    checkpoint: Path,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
    reads: str,
) -> None:
    api = ["--api", api_url, "--api-key", API_KEY]
    assert main(["experiment", "run", "--network", str(checkpoint), "--station", STATION,
                 "--reads-per-point", reads, *api]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "schedule.reads_per_point" in err and "Traceback" not in err

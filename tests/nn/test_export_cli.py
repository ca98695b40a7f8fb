"""`hwctl export`: the user's torch model becomes an upload the service reads and runs as data."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from hwctl.cli import main
from hwctl.nn.exported import read_exported_program
from hwctl.nn.graph_module import ExportedModule
from hwctl.nn.models import build_model, save_checkpoint

USER_CODE = '''
import torch
from torch import nn


class Net(nn.Module):
    """Flattens by the batch size it is given: exported with a dynamic batch, any batch runs."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(1, 4, 3)
        self.head = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        return self.head(torch.relu(self.features(x)).view(x.size(0), -1))


def build() -> nn.Module:
    torch.manual_seed(7)
    return Net()


def with_layer_norm() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.LayerNorm(64), nn.Linear(64, 3))


class Branching(nn.Module):
    """Takes a branch by its input's values: torch.export cannot trace that."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(x) if x.sum() > 0 else self.head(-x)
'''


@pytest.fixture
def user_file(tmp_path: Path) -> Path:
    path = tmp_path / "my_model.py"
    path.write_text(USER_CODE)
    return path


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["export", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_a_model_from_the_users_file_is_exported_and_runs_any_batch_as_the_service_reads_it(
    user_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "net.pt2"
    code, printed, _ = _run([f"{user_file}:build", "--input-shape", "1,8,8", "--out", str(out)], capsys)
    assert code == 0
    summary = json.loads(printed)
    weights = 4 * 1 * 3 * 3 + 3 * 144
    assert summary == {"out": str(out), "bytes": out.stat().st_size, "input_shape": [1, 8, 8],
                       "analog_layers": 2, "analog_weights": weights, "devices": 2 * weights}  # fmt: skip
    network = read_exported_program(out.read_bytes())
    assert network.input_shapes == [(None, 1, 8, 8)]  # the batch is dynamic
    namespace: dict[str, object] = {}
    exec(compile(USER_CODE, "user", "exec"), namespace)  # the user's model, rebuilt with its seed
    original = namespace["build"]().eval()  # type: ignore[operator]
    x = torch.randn(11, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(ExportedModule(network).eval()(x), original(x), rtol=0, atol=0)


def test_a_built_in_architecture_is_exported_from_its_checkpoint_with_its_input_shape(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    save_checkpoint(tmp_path / "digits.pt", "digits-resnet", build_model("digits-resnet"), {})
    out = tmp_path / "digits.pt2"
    code, printed, _ = _run(["digits-resnet", "--checkpoint", str(tmp_path / "digits.pt"), "--out", str(out)],
                            capsys)  # fmt: skip
    assert code == 0 and json.loads(printed)["input_shape"] == [1, 8, 8]
    assert read_exported_program(out.read_bytes()).n_analog_weights == json.loads(printed)["analog_weights"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["digits-resnet"], "the built-in digits-resnet needs its weights: --checkpoint FILE"),
        (["{user}:build"], "--input-shape C,H,W is needed for a model of your own"),
        (["{user}:nothing", "--input-shape", "1,8,8"], "has no 'nothing'"),
        (["{user}:with_layer_norm", "--input-shape", "1,8,8"],
         "the service could not run this export: .*layer_norm.* is not supported"),
        (["{user}:Branching", "--input-shape", "4"],
         "torch.export cannot trace .*:Branching: .*data-dependent"),
    ],
    ids=["built-in without weights", "no input shape", "no such name", "unsupported operation",
         "untraceable"],
)  # fmt: skip
def test_what_cannot_be_exported_is_a_message_and_no_file(
    argv: list[str], message: str, user_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "net.pt2"
    code, _, err = _run([a.replace("{user}", str(user_file)) for a in argv] + ["--out", str(out)], capsys)
    assert code == 2
    assert err.startswith("hwctl export: error: "), err  # the message, not torch's logs before it
    assert re.search(message, err), err
    assert not out.exists()

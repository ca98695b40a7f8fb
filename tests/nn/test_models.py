from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch

from hwctl.nn.data import DatasetMissingError, ImageSet, Normalizer, cifar10_dir, load_dataset
from hwctl.nn.inference import accuracy_pct
from hwctl.nn.models import (
    UnknownModelError,
    analog_weight_count,
    build_model,
    load_checkpoint,
    model_spec,
    save_checkpoint,
    seeded_checkpoint,
)  # fmt: skip

SHARED_MODELS = Path(__file__).resolve().parents[3] / "shared" / "models"
# Documented in ../shared/data/README.md for the JPEG-derived test set.
DOCUMENTED_ACCURACY = {
    "resnet20-12fca82f.th": ("resnet20", 81.03),
    "resnet32-d509ac18.th": ("resnet32", 82.56),
}


@pytest.mark.cifar
@pytest.mark.parametrize("filename", sorted(DOCUMENTED_ACCURACY))
def test_shared_checkpoint_loads_strictly_and_gives_documented_accuracy(
    filename: str, cifar_test: ImageSet
) -> None:
    path = SHARED_MODELS / filename
    if not path.is_file():
        pytest.skip(f"{path} not available")
    arch, documented = DOCUMENTED_ACCURACY[filename]
    model = load_checkpoint(path, arch).build()  # load_state_dict(strict=True) inside
    subset = cifar_test.subset(600, seed=3)
    assert abs(accuracy_pct(model, subset, Normalizer(arch)) - documented) < 5.0  # 600 images: ±3.2 pt CI


def test_paper_resnet32_has_the_papers_361722_weights_with_fc_bias() -> None:
    model = build_model("resnet32-paper")
    fc_bias = model.linear.bias.numel()
    assert analog_weight_count(model) + fc_bias == 361_722


def test_standard_resnet32_has_461872_conv_and_linear_weights() -> None:
    assert analog_weight_count(build_model("resnet32")) == 461_872


def test_checkpoint_round_trip_keeps_arch_recipe_and_weights(tmp_path: Path) -> None:
    model = build_model("digits-resnet")
    save_checkpoint(tmp_path / "m.pt", "digits-resnet", model, {"recipe": {"eta": 0.038}, "epochs": 2})
    raw = torch.load(tmp_path / "m.pt", weights_only=True)  # plain data only
    assert raw["arch"] == "digits-resnet"
    ckpt = load_checkpoint(tmp_path / "m.pt")
    assert ckpt.meta["recipe"]["eta"] == 0.038
    x = torch.rand(3, 1, 8, 8)
    torch.testing.assert_close(ckpt.build()(x), model.eval()(x))


def test_checkpoint_loads_the_same_from_a_path_its_bytes_or_an_open_file(tmp_path: Path) -> None:
    model = build_model("digits-resnet")
    save_checkpoint(tmp_path / "m.pt", "digits-resnet", model, {"epochs": 3})
    stored = (tmp_path / "m.pt").read_bytes()  # what the database holds
    with (tmp_path / "m.pt").open("rb") as stream:
        loaded = [load_checkpoint(tmp_path / "m.pt"), load_checkpoint(stored), load_checkpoint(stream)]
    for ckpt in loaded:
        assert (ckpt.arch, ckpt.meta) == ("digits-resnet", {"epochs": 3})
        torch.testing.assert_close(ckpt.state_dict, model.state_dict())


def test_bytes_that_are_no_checkpoint_are_named_as_such() -> None:
    buffer = io.BytesIO()
    torch.save({"weights": torch.zeros(2)}, buffer)
    with pytest.raises(ValueError, match="not a checkpoint"):
        load_checkpoint(buffer.getvalue())


def test_unknown_model_name_lists_the_known_ones() -> None:
    with pytest.raises(UnknownModelError, match="resnet32"):
        build_model("resnet33")


def test_cifar_directory_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HWCTL_CIFAR10_DIR", str(tmp_path))
    assert cifar10_dir() == tmp_path


def test_resnet34_has_the_imagenet_layout_and_21_8_million_analog_weights() -> None:
    """He et al. 2016 table 1: 7×7/2 stem, [3, 4, 6, 3] basic blocks of 64-128-256-512, fc 1000."""
    model = seeded_checkpoint("resnet34", seed=0).build()
    assert analog_weight_count(model) == 21_779_648  # 43.6 M devices as differential pairs
    assert sum(p.numel() for p in model.parameters()) == 21_797_672  # with BN and fc bias, as torchvision's
    assert [len(stage) for stage in model.stages] == [3, 4, 6, 3]
    assert tuple(model.conv1.weight.shape) == (64, 3, 7, 7) and tuple(model.fc.weight.shape) == (1000, 512)
    assert model_spec("resnet34").input_shape == (3, 224, 224)
    with torch.no_grad():
        assert model(torch.zeros(1, *model_spec("resnet34").input_shape)).shape == (1, 1000)


def test_a_seeded_checkpoint_is_reproducible_and_says_it_is_untrained() -> None:
    first, again, other = (seeded_checkpoint("digits-resnet", seed=s) for s in (3, 3, 4))
    torch.testing.assert_close(first.state_dict, again.state_dict)
    assert not torch.equal(first.state_dict["conv1.weight"], other.state_dict["conv1.weight"])
    assert first.meta == {"init": "seeded", "seed": 3, "trained": False}


def test_resnet34s_data_set_is_not_shipped_and_says_so() -> None:
    with pytest.raises(DatasetMissingError, match="ImageNet is not available"):
        load_dataset(model_spec("resnet34").dataset, "test")

"""Network architectures by name, and checkpoints that record how they were made.

CIFAR ResNets follow the akamaster layout exactly (option-A shortcuts) so the shared
pretrained files load with `strict=True`; the paper's 361,722-weight ResNet-32 uses
widths 16/28/56 with 1×1 projection shortcuts; a tiny ResNet serves the 8×8 digits.
ResNet-34 is the ImageNet network of the paper's large-scale experiment (He et al.
2016, table 1: 21.8 M analog weights = 43.6 M devices); no ImageNet checkpoint or data
is at hand here, so it is used with seeded random weights (`seeded_checkpoint`) to
exercise size, not accuracy. Checkpoints are plain tensors + JSON-able metadata,
loaded with `weights_only=True`.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import torch
import torch.nn.functional as F
from torch import nn

from hwctl.nn.exported import (
    MAX_EXPANDED_BYTES,
    ExportedNetwork,
    is_exported_archive,
    read_exported_program,
)


class BasicBlock(nn.Module):
    """Two 3×3 convs with BN; shortcut is option A (subsample + zero-pad) or a 1×1 projection."""

    def __init__(self, in_planes: int, planes: int, stride: int, shortcut: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.pad_channels = 0
        self.subsample = stride != 1 or in_planes != planes
        self.shortcut: nn.Module = nn.Identity()
        if self.subsample and shortcut == "A":
            self.pad_channels = (planes - in_planes) // 2
        elif self.subsample:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.subsample and self.pad_channels:
            p = self.pad_channels
            residual = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, p, p))
        else:
            residual = self.shortcut(x)
        return F.relu(out + residual)


def _kaiming_init(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Linear | nn.Conv2d):
            nn.init.kaiming_normal_(m.weight)


class ResNet(nn.Module):
    """He et al. CIFAR ResNet: stem conv, three stages, global average pool, linear head."""

    def __init__(
        self, blocks_per_stage: int, widths: tuple[int, int, int], shortcut: str,
        in_channels: int = 3, num_classes: int = 10,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        in_planes = widths[0]
        stages = []
        for i, planes in enumerate(widths):
            blocks = []
            for j in range(blocks_per_stage):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock(in_planes, planes, stride, shortcut))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(widths[2], num_classes)
        _kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


class ImageNetResNet(nn.Module):
    """He et al. ImageNet ResNet with basic blocks: 7×7/2 stem conv, 3×3/2 max pool, one stage
    per entry of `blocks` (the first block of every stage after the first halves the
    resolution, with a 1×1 projection shortcut), global average pool, linear `fc` head."""

    def __init__(
        self, blocks: tuple[int, ...], widths: tuple[int, ...], in_channels: int = 3, num_classes: int = 1000
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        in_planes = widths[0]
        stages = []
        for i, (n_blocks, planes) in enumerate(zip(blocks, widths, strict=True)):
            stage = []
            for j in range(n_blocks):
                stage.append(BasicBlock(in_planes, planes, 2 if (i > 0 and j == 0) else 1, "B"))
                in_planes = planes
            stages.append(nn.Sequential(*stage))
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(widths[-1], num_classes)
        _kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.stages(F.max_pool2d(out, 3, 2, 1))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


@dataclass(frozen=True)
class ModelSpec:
    """How to build a named model, what input (C, H, W) it takes and how it is normalized."""

    build: Callable[[], nn.Module]
    dataset: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_shape: tuple[int, int, int]


IMAGENET_MEAN = (0.485, 0.456, 0.406)  # what the akamaster checkpoints were trained with
IMAGENET_STD = (0.229, 0.224, 0.225)

CIFAR_INPUT = (3, 32, 32)

MODELS: dict[str, ModelSpec] = {
    "resnet20": ModelSpec(
        lambda: ResNet(3, (16, 32, 64), "A"), "cifar10", IMAGENET_MEAN, IMAGENET_STD, CIFAR_INPUT
    ),
    "resnet32": ModelSpec(
        lambda: ResNet(5, (16, 32, 64), "A"), "cifar10", IMAGENET_MEAN, IMAGENET_STD, CIFAR_INPUT
    ),
    "resnet32-paper": ModelSpec(
        lambda: ResNet(5, (16, 28, 56), "B"), "cifar10", IMAGENET_MEAN, IMAGENET_STD, CIFAR_INPUT
    ),
    "digits-resnet": ModelSpec(
        lambda: ResNet(1, (8, 16, 32), "A", in_channels=1), "digits", (0.0,), (1.0,), (1, 8, 8)
    ),
    "resnet34": ModelSpec(
        lambda: ImageNetResNet((3, 4, 6, 3), (64, 128, 256, 512)),
        "imagenet",
        IMAGENET_MEAN,
        IMAGENET_STD,
        (3, 224, 224),
    ),
}


class UnknownModelError(ValueError):
    """The name is not in the model registry."""


def model_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise UnknownModelError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}") from None


def build_model(name: str) -> nn.Module:
    """A freshly initialised model of the registered architecture `name`."""
    return model_spec(name).build()


def seeded_checkpoint(arch: str, seed: int) -> Checkpoint:
    """A registered architecture with reproducible random weights (He initialisation from
    `seed`), labelled untrained: for size and speed work where no trained checkpoint exists."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = build_model(arch)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return Checkpoint(arch, state, {"init": "seeded", "seed": seed, "trained": False})


def analog_weight_count(model: nn.Module) -> int:
    """Number of conv + linear weights (what goes onto PCM; biases and BN stay digital)."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear))


EXPORTED = "exported"  # the architecture of an uploaded graph that is not a registered one

CheckpointSource = str | Path | bytes | BinaryIO  # a file, stored bytes, or an open binary stream


@dataclass
class Checkpoint:
    """A model's weights plus the architecture name and the recipe that produced them."""

    arch: str
    state_dict: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)
    # An uploaded torch.export graph (`.pt2`) of this architecture: built as the graph it
    # is (`ExportedModule`), never from code of the upload.
    graph: ExportedNetwork | None = None

    def build(self) -> nn.Module:
        if self.graph is None:
            model = build_model(self.arch)
        else:
            from hwctl.nn.graph_module import ExportedModule

            model = ExportedModule(self.graph)
        model.load_state_dict(self.state_dict, strict=True)
        return model.eval()


def save_checkpoint(path: str | Path, arch: str, model: nn.Module, meta: dict[str, Any]) -> None:
    """Write tensors and plain metadata only, so `torch.load(weights_only=True)` reads it."""
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    tmp = Path(f"{path}.tmp")
    torch.save({"arch": arch, "state_dict": state, "meta": meta}, tmp)
    tmp.replace(path)  # atomic: a killed run never leaves a half-written checkpoint


def load_checkpoint(
    source: CheckpointSource, arch: str | None = None, max_expanded_bytes: int = MAX_EXPANDED_BYTES
) -> Checkpoint:
    """Load an hwctl checkpoint, or an akamaster one (needs `arch`; 'module.' is stripped).

    `source` is a path, the checkpoint's bytes (as stored in the database) or an open
    binary file, so every caller decodes checkpoints the same safe way. A `.pt2` is read
    within `max_expanded_bytes` (its entries and its weights' float32 copies together).
    """
    where = f"{source}" if isinstance(source, str | Path) else "checkpoint"
    if isinstance(source, str | Path) and str(source).endswith(".pt2"):
        source = Path(source).read_bytes()
    if isinstance(source, bytes) and is_exported_archive(source):
        return exported_checkpoint(source, arch, max_expanded_bytes)
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    raw = torch.load(stream, map_location="cpu", weights_only=True)
    if not isinstance(raw, dict) or "state_dict" not in raw:
        raise ValueError(f"{where}: not a checkpoint (no 'state_dict')")
    state = {k.removeprefix("module."): v for k, v in raw["state_dict"].items()}
    name = raw.get("arch") or arch
    if name is None:
        raise ValueError(f"{where}: checkpoint does not name its architecture; pass arch=")
    meta = dict(raw.get("meta", {}))
    if "best_prec1" in raw:
        meta.setdefault("reported_best_prec1", float(raw["best_prec1"]))
    model_spec(name)
    return Checkpoint(name, state, meta)


def exported_checkpoint(
    data: bytes, arch: str | None, max_expanded_bytes: int = MAX_EXPANDED_BYTES
) -> Checkpoint:
    """A `.pt2` (`hwctl export`, torch.export), read as data (`hwctl.nn.exported`): its weights
    under the graph's parameter names. Named as a registered architecture, they must be that
    architecture's own; without one (or as EXPORTED) the graph is the architecture."""
    from hwctl.nn.graph_module import ExportedModule

    network = read_exported_program(data, max_expanded_bytes)
    state = ExportedModule(network).state_dict()
    if arch is None or arch == EXPORTED:
        return Checkpoint(EXPORTED, dict(state), {"format": "torch.export"}, network)
    expected = model_spec(arch).build().state_dict()
    if state.keys() != expected.keys():
        missing, extra = sorted(expected.keys() - state.keys()), sorted(state.keys() - expected.keys())
        raise ValueError(f"the graph is not a {arch}: missing {missing[:5]}, unexpected {extra[:5]}")
    shapes = [k for k in state if state[k].shape != expected[k].shape]
    if shapes:
        raise ValueError(f"the graph is not a {arch}: shapes differ for {shapes[:5]}")
    return Checkpoint(arch, dict(state), {"format": "torch.export"}, network)

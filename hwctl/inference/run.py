"""The compute core: a network rebuilt from one readout's conductances, run on a batch of inputs.

Per compensation method the weights are rebuilt once (`ReadoutEvaluator.prepare`: the
readout's W = (G+ − G−)/s_l, GDC gains from the t0 readout, AdaBS statistics), then the
plain torch model classifies every input, in inference mode and in batches, with the
analog periphery hooked onto its analog layers when asked. So with an ideal periphery
inference from a readout costs what digital inference of the same model costs.
Repeats redraw the periphery's output noise; a fresh read of the chip is the job's
business (`at=now`), not this module's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from hwctl.inference import periphery
from hwctl.inference.inputs import ImageShape, InputError, Inputs, Normalisation
from hwctl.inference.results import Outcome
from hwctl.mapping import DeviceMap
from hwctl.nn.calibration import needs_calibration
from hwctl.nn.compensation import AnalogIO
from hwctl.nn.evaluation import Images, ReadoutEvaluator
from hwctl.nn.models import Checkpoint
from hwctl.nn.network_spec import NetworkSpec, has_batchnorm, network_spec, registered_spec
from hwctl.vocabulary import DEFAULT_GDC_STATISTIC, CompensationMethod, GdcStatistic

BATCH_IMAGES = 500  # fastest of 250/500/1000 for the CIFAR ResNets on 2 cores; memory ~0.2 GB
MAX_REPEATS = 100
MAX_TOP_K = 100
MAX_LOGITS = 50_000_000  # float32 values one inference may produce (200 MB: memory and its row)

Progress = Callable[[float, str], None]  # (fraction done, message); may raise to stop


class InferenceError(ValueError):
    """The requested inference cannot run on this network (e.g. AdaBS without batch norm)."""


@dataclass(frozen=True)
class InferenceSettings:
    """What to compute: methods, periphery, repeats (fresh periphery noise each), top-k."""

    methods: tuple[CompensationMethod, ...] = (CompensationMethod.NONE,)
    periphery: AnalogIO = field(default_factory=AnalogIO)
    repeats: int = 1
    top_k: int = 1
    seed: int = 0
    batch_images: int = BATCH_IMAGES

    def __post_init__(self) -> None:
        if not self.methods or len(set(self.methods)) != len(self.methods):
            raise InferenceError(f"give each compensation method once, at least one: {list(self.methods)}")
        if not 1 <= self.repeats <= MAX_REPEATS:
            raise InferenceError(f"repeats must be 1–{MAX_REPEATS}, got {self.repeats}")
        if not 1 <= self.top_k <= MAX_TOP_K:
            raise InferenceError(f"top_k must be 1–{MAX_TOP_K}, got {self.top_k}")
        if self.batch_images < 1:
            raise InferenceError(f"batch_images must be ≥ 1, got {self.batch_images}")


class ChipNetwork:
    """A checkpoint bound to the device map it was programmed with and to the GDC statistic
    its gains are taken with: what an inference runs."""

    def __init__(
        self, checkpoint: Checkpoint, device_map: DeviceMap, calibration: Images | None = None,
        gdc_statistic: GdcStatistic = DEFAULT_GDC_STATISTIC,
    ) -> None:  # fmt: skip
        self.evaluator = ReadoutEvaluator(checkpoint, device_map, calibration, gdc_statistic=gdc_statistic)
        self.gdc_statistic = gdc_statistic
        self.spec = network_spec(checkpoint)
        self.normalisation = Normalisation(self.spec.mean, self.spec.std)

    @property
    def model(self) -> nn.Module:
        return self.evaluator.model

    @property
    def input_shape(self) -> ImageShape:
        """(channels, height, width) the network was built for."""
        return input_shape(self.spec)

    def check(self, inputs: Inputs, settings: InferenceSettings, has_t0: bool) -> None:
        """Everything that would fail mid-run, refused before any work."""
        check_fits(self.spec, inputs.image_shape)
        check_methods(settings.methods, batchnorm=has_batchnorm(self.model), gdc_statistic=self.gdc_statistic,
                      has_calibration=self.evaluator.calibration_x is not None)  # fmt: skip
        if CompensationMethod.GDC in settings.methods and not has_t0:
            raise InferenceError("GDC needs the run's first readout as its reference (t0)")

    def infer(
        self, inputs: Inputs, g_t_us: npt.NDArray[np.floating], settings: InferenceSettings,
        g_t0_us: npt.NDArray[np.floating] | None = None, progress: Progress | None = None,
    ) -> list[Outcome]:
        """Logits for every input, per method and repeat, from the readout `g_t_us`."""
        self.check(inputs, settings, g_t0_us is not None)
        steps = len(settings.methods) * settings.repeats
        outcomes = []
        for m, method in enumerate(settings.methods):
            self.evaluator.prepare(g_t_us, method, g_t0_us)
            for repeat in range(settings.repeats):
                step = m * settings.repeats + repeat

                def tick(done: float, step: int = step, method: str = method) -> None:
                    if progress is not None:
                        progress((step + done) / steps, f"{method}, repeat {step % settings.repeats + 1}")

                handles = periphery.attach(self.model, settings.periphery, seed=settings.seed + repeat)
                try:
                    logits = forward(self.model, inputs, self.normalisation, settings.batch_images, tick)
                finally:
                    for h in handles:
                        h.remove()
                outcomes.append(Outcome(method, repeat, logits))
        return outcomes


def forward(
    model: nn.Module, inputs: Inputs, normalisation: Normalisation, batch_images: int = BATCH_IMAGES,
    progress: Callable[[float], None] | None = None,
) -> npt.NDArray[np.float32]:
    """The model's logits for every input, batch by batch, in inference mode."""
    model.eval()
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(inputs), batch_images):
            stop = min(start + batch_images, len(inputs))
            chunks.append(model(inputs.batch(start, stop, normalisation)).float().numpy())
            if progress is not None:
                progress(stop / len(inputs))
    return np.concatenate(chunks)


def input_shape(spec: NetworkSpec) -> ImageShape:
    """The image shape (C, H, W) the network takes."""
    channels, height, width = spec.input_shape
    return channels, height, width


def check_fits(spec: NetworkSpec, shape: Sequence[int]) -> None:
    if tuple(shape) != spec.input_shape:
        raise InputError(
            f"the network takes images of shape {_shape(spec.input_shape)} (C×H×W); "
            f"these are {_shape(shape)}"
        )


def check_methods(
    methods: Sequence[CompensationMethod], *, batchnorm: bool,
    gdc_statistic: GdcStatistic = DEFAULT_GDC_STATISTIC, has_calibration: bool = True,
) -> None:  # fmt: skip
    """AdaBS only where there is batch norm to re-estimate; calibration images wherever AdaBS
    or the GDC statistic takes them."""
    if CompensationMethod.ADABS in methods and not batchnorm:
        raise InferenceError(
            "AdaBS re-estimates batch-norm statistics, and this network has no batch norm; choose none or gdc"
        )
    if needs_calibration(methods, gdc_statistic) and not has_calibration:
        needs = "AdaBS" if CompensationMethod.ADABS in methods else f"GDC's {gdc_statistic} statistic"
        raise InferenceError(f"{needs} needs a calibration set")


def architecture_has_batchnorm(arch: str) -> bool:
    """Whether a registered architecture has batch norm (built once per architecture)."""
    return registered_spec(arch).has_batchnorm


def architecture_classes(arch: str) -> int:
    """How many logits a registered architecture gives per image (one forward pass, once)."""
    return registered_spec(arch).n_classes


def check_size(n_images: int, n_classes: int, settings: InferenceSettings) -> None:
    """The logits of every method and repeat must stay within MAX_LOGITS."""
    values = n_images * n_classes * len(settings.methods) * settings.repeats
    if values > MAX_LOGITS:
        raise InferenceError(
            f"{n_images} images × {n_classes} classes × {len(settings.methods)} method(s) × "
            f"{settings.repeats} repeat(s) is {values} logits; at most {MAX_LOGITS} per inference: "
            "split the data set or ask for fewer repeats"
        )


def _shape(shape: Sequence[int]) -> str:
    return "×".join(str(n) for n in shape)

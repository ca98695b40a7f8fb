"""Accuracy of a network whose analog weights come from read-back conductances.

The weights are rebuilt once per readout (vectorized), optionally corrected by GDC
or followed by AdaBS, then the ordinary torch model classifies the images, so
inference costs the same as plain digital inference. No printing: the service and
the CLI both call this.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from hwctl.inference.inputs import Inputs, Normalisation
from hwctl.mapping import DeviceMap
from hwctl.nn.compensation import AnalogIO, GdcGains, adapt_batchnorm, compensation_method
from hwctl.nn.conductance import load_matrices
from hwctl.nn.data import ImageSet, Normalizer, augment_crop_flip
from hwctl.nn.models import Checkpoint
from hwctl.nn.network_spec import network_spec
from hwctl.vocabulary import DEFAULT_GDC_STATISTIC, CompensationMethod, GdcStatistic

# AdaBS calibration images when the experiment does not choose: the paper's 2,600 for
# CIFAR-10; 300 for the small digits set.
CALIBRATION_IMAGES = {"cifar10": 2600}
CALIBRATION_IMAGES_OTHER = 300
# What an evaluation runs on: a built-in set (uint8 NHWC, the network's normalisation), or a
# data set's inputs (uint8 or float32, either layout, normalised as stored with them).
Images = ImageSet | Inputs


@dataclass(frozen=True)
class EvalResult:
    """Top-1 accuracy (percent) with a 95 % Wilson interval."""

    accuracy: float
    ci95_low: float
    ci95_high: float
    n_images: int
    n_correct: int
    method: str


def wilson_interval_pct(n_correct: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95 % Wilson score interval for a binomial proportion, in percent."""
    if n == 0:
        return 0.0, 100.0
    p = n_correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return 100.0 * max(0.0, centre - half), 100.0 * min(1.0, centre + half)


def result_from_predictions(pred: torch.Tensor, labels: npt.NDArray[np.integer], method: str) -> EvalResult:
    n_correct = int((pred == torch.as_tensor(labels)).sum())
    n = len(labels)
    low, high = wilson_interval_pct(n_correct, n)
    return EvalResult(100.0 * n_correct / max(n, 1), low, high, n, n_correct, method)


class ReadoutEvaluator:
    """A checkpoint bound to its device map; evaluates any readout with any compensation."""

    def __init__(
        self,
        checkpoint: Checkpoint,
        device_map: DeviceMap,
        calibration: Images | None = None,
        analog_io: AnalogIO | None = None,
        batch_size: int = 500,
        gdc_statistic: GdcStatistic = DEFAULT_GDC_STATISTIC,
    ) -> None:
        self.checkpoint = checkpoint
        self.device_map = device_map
        self.model = checkpoint.build()
        spec = network_spec(checkpoint)
        self.normalizer = Normalizer(spec)
        self.normalisation = Normalisation(spec.mean, spec.std)
        self.calibration_x: torch.Tensor | None = None
        if calibration is not None:
            self.calibration_x = self.normalised(calibration, 0, len(calibration))
        self.analog_io = analog_io or AnalogIO()
        self.batch_size = batch_size
        self.gdc_statistic = GdcStatistic(gdc_statistic)
        self._gdc: GdcGains | None = None  # built at the first GDC, from the checkpoint's weights

    def prepare(
        self,
        g_t_us: npt.NDArray[np.floating],
        method: str = CompensationMethod.NONE,
        g_t0_us: npt.NDArray[np.floating] | None = None,
    ) -> None:
        """Load the readout's weights into the model and apply the compensation `method`."""
        method = compensation_method(method)
        self.model.load_state_dict(self.checkpoint.state_dict, strict=True)  # fresh BN statistics
        matrices = self.device_map.weights_from_g(np.asarray(g_t_us))
        gains = None
        if method == CompensationMethod.GDC and g_t0_us is None:
            raise ValueError("GDC needs the t0 readout as its reference")
        if g_t0_us is not None and method in (CompensationMethod.GDC, CompensationMethod.ADABS):
            # AdaBS also takes the GDC gains: BN makes them irrelevant for layers it
            # follows, and they are the only correction for the final FC, whose drifted
            # MVM output would otherwise shrink against its digital bias.
            gdc = self._gdc_gains()
            reference = gdc.layer_statistics(g_t0_us, self.device_map.weights_from_g(np.asarray(g_t0_us)))
            gains = gdc.gains(reference, gdc.layer_statistics(g_t_us, matrices))
        load_matrices(self.model, matrices, gains, self.device_map.digital_layers)
        if method == CompensationMethod.ADABS:
            if self.calibration_x is None:
                raise ValueError("AdaBS needs a calibration set")
            adapt_batchnorm(self.model, self.calibration_x)
        self.model.eval()

    def _gdc_gains(self) -> GdcGains:
        if self._gdc is None:
            if self.gdc_statistic == GdcStatistic.CALIBRATION_BATCH and self.calibration_x is None:
                raise ValueError("calibration-batch GDC needs a calibration set")
            self.model.load_state_dict(self.checkpoint.state_dict, strict=True)
            self._gdc = GdcGains(self.gdc_statistic, self.device_map, self.model, self.calibration_x)
        return self._gdc

    def normalised(self, images: Images, start: int, stop: int) -> torch.Tensor:
        """Images start..stop as the network takes them (float32 NCHW, normalised)."""
        if isinstance(images, Inputs):
            return images.batch(start, stop, self.normalisation)
        return self.normalizer(images.x[start:stop])

    @torch.no_grad()
    def predict(self, images: Images) -> torch.Tensor:
        """Predicted class per image, batch by batch (model as prepared, in eval mode)."""
        self.model.eval()
        starts = range(0, len(images), self.batch_size)
        out = [self.model(self.normalised(images, i, i + self.batch_size)).argmax(1) for i in starts]
        return torch.cat(out) if out else torch.empty(0, dtype=torch.long)

    def evaluate(
        self,
        data: Images,
        g_t_us: npt.NDArray[np.floating],
        method: str = CompensationMethod.NONE,
        g_t0_us: npt.NDArray[np.floating] | None = None,
        seed: int = 0,
    ) -> EvalResult:
        """Accuracy on `data` of the network read back as `g_t_us`, compensated by `method`."""
        self.prepare(g_t_us, method, g_t0_us)
        handles = self.analog_io.attach(self.model, seed=seed, digital_layers=self.device_map.digital_layers)
        try:
            pred = self.predict(data)
        finally:
            for h in handles:
                h.remove()
        if data.y is None:
            raise ValueError("accuracy needs labelled images")
        return result_from_predictions(pred, data.y, method)


def evaluate_readout(
    checkpoint: Checkpoint,
    device_map: DeviceMap,
    g_t0_us: npt.NDArray[np.floating] | None,
    g_t_us: npt.NDArray[np.floating],
    method: str,
    data: ImageSet,
    calibration: ImageSet | None = None,
    analog_io: AnalogIO | None = None,
) -> EvalResult:
    """One-shot: accuracy of `checkpoint` with analog weights from `g_t_us` and compensation `method`."""
    evaluator = ReadoutEvaluator(checkpoint, device_map, calibration, analog_io)
    return evaluator.evaluate(data, g_t_us, method, g_t0_us)


def calibration_set(train: ImageSet, dataset: str, n_images: int | None = None, seed: int = 0) -> ImageSet:
    """`n_images` of `train` for AdaBS (default 2,600 for CIFAR-10 as in the paper, 300 otherwise).

    CIFAR images get the training augmentation (crop with zero padding + flip), fixed
    by `seed`: BN statistics learned in training include the padded borders, and
    re-estimating them on unaugmented images costs ~3 points even with exact weights.
    """
    subset = train.subset(n_images or CALIBRATION_IMAGES.get(dataset, CALIBRATION_IMAGES_OTHER), seed=seed)
    if dataset != "cifar10":
        return subset
    return ImageSet(augment_crop_flip(subset.x, np.random.default_rng(seed)), subset.y)

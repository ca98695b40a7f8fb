"""Which calibration images an evaluation needs, decided in one place for the evaluate and
inference jobs, the report's forecast and `hwctl evaluate`.

Two things take them: AdaBS (batch-norm statistics re-estimated on them) and GDC with the
`calibration-batch` statistic (S_l = Σ|y_l| of a fixed batch of them through layer l, at t0
and at t). AdaBS takes the GDC gains too, so it needs them under either. Both get the
same set, `calibration_set`'s (training images, augmented for CIFAR-10), loaded once.
"""

from __future__ import annotations

from collections.abc import Collection

from hwctl.nn.data import ImageSet, load_dataset
from hwctl.nn.evaluation import calibration_set
from hwctl.vocabulary import CompensationMethod, GdcStatistic


def needs_calibration(methods: Collection[str], gdc_statistic: GdcStatistic) -> bool:
    """Whether evaluating `methods` under `gdc_statistic` takes calibration images."""
    if CompensationMethod.ADABS in methods:
        return True
    return gdc_statistic == GdcStatistic.CALIBRATION_BATCH and CompensationMethod.GDC in methods


def evaluation_calibration_set(
    dataset: str, methods: Collection[str], gdc_statistic: GdcStatistic, n_images: int | None = None,
    seed: int = 0,
) -> ImageSet | None:  # fmt: skip
    """The calibration images of an evaluation, or None when neither AdaBS nor the GDC
    statistic takes any: `n_images` training images of `dataset` picked by `seed`."""
    if not needs_calibration(methods, gdc_statistic):
        return None
    return calibration_set(load_dataset(dataset, "train"), dataset, n_images, seed)

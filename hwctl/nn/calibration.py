"""Whether an evaluation takes calibration images, decided in one place for the experiment
submission, the evaluate job and the report's forecast (`hwctl.store.datasets`), the
inference job and its checks.

Two things take them: AdaBS (batch-norm statistics re-estimated on them) and GDC with the
`calibration-batch` statistic (S_l = Σ|y_l| of a fixed batch of them through layer l, at t0
and at t). AdaBS takes the GDC gains too, so it needs them under either statistic. Both
use the same set.
"""

from __future__ import annotations

from collections.abc import Collection

from hwctl.vocabulary import CompensationMethod, GdcStatistic


def needs_calibration(methods: Collection[str], gdc_statistic: GdcStatistic) -> bool:
    """Whether evaluating `methods` under `gdc_statistic` takes calibration images."""
    if CompensationMethod.ADABS in methods:
        return True
    return gdc_statistic == GdcStatistic.CALIBRATION_BATCH and CompensationMethod.GDC in methods

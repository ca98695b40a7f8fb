"""Which evaluations take calibration images: AdaBS always, GDC only with its calibration-batch statistic."""

from __future__ import annotations

from hwctl.nn.calibration import needs_calibration
from hwctl.vocabulary import CompensationMethod, GdcStatistic


def test_adabs_and_calibration_batch_gdc_take_calibration_images_and_nothing_else_does() -> None:
    none, gdc, adabs = CompensationMethod.NONE, CompensationMethod.GDC, CompensationMethod.ADABS
    for statistic in GdcStatistic:
        assert needs_calibration([none, adabs], statistic)
        assert not needs_calibration([none], statistic)
        assert needs_calibration([none, gdc], statistic) == (statistic == GdcStatistic.CALIBRATION_BATCH)

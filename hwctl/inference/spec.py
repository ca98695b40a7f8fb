"""What a user asks of an inference job: the one contract between the API, which validates
and stores it on the inference row, and the worker, which reads it back."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field

from hwctl.inference.run import MAX_REPEATS, MAX_TOP_K, InferenceSettings
from hwctl.nn.compensation import AnalogIO
from hwctl.request_model import RequestModel
from hwctl.vocabulary import DEFAULT_GDC_STATISTIC, CompensationMethod, GdcStatistic

MAX_ID = 2**31 - 1
MAX_SERIES_CHARS = 64
SERIES_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9 ._:+-]*$"
MAX_REEVALUATED_READOUTS = 1_000
EVALUATION_SERIES = "evaluation"  # the name of the experiment's own evaluations in the series table


class PeripherySpec(RequestModel):
    """Analog periphery of every analog layer (`hwctl.inference.periphery`); omitted: ideal."""

    model_config = ConfigDict(frozen=True)  # and RequestModel's: extra fields and NaN refused
    dac_bits: int | None = Field(None, ge=1, le=16, description="input DAC resolution; null: ideal")
    adc_bits: int | None = Field(None, ge=1, le=16, description="output ADC resolution; null: ideal")
    output_noise_rel: float = Field(
        0.0, ge=0.0, le=1.0, allow_inf_nan=False,
        description="σ of additive noise on each MVM output, relative to the sample's max |output|",
    )  # fmt: skip

    def analog_io(self) -> AnalogIO:
        return AnalogIO(self.dac_bits, self.adc_bits, self.output_noise_rel)


def _none_only() -> list[CompensationMethod]:
    return [CompensationMethod.NONE]


CALIBRATION_IMAGES_DOC = "calibration set size (AdaBS, and GDC's calibration-batch statistic)"
GDC_STATISTIC_DOC = "the per-layer statistic S_l of GDC's gain S_l(t0)/S_l(t) (also taken by AdaBS)"


class InferenceSpec(RequestModel):
    """Run a data set through the network as the chip holds it, at a readout or now."""

    model_config = ConfigDict(frozen=True)  # and RequestModel's: extra fields and NaN refused
    dataset_id: int = Field(ge=1, le=MAX_ID, description="GET /datasets lists them (built-ins included)")
    at: int | Literal["now"] = Field(
        description='a stored readout id of this experiment, or "now": a fresh read of the chip'
    )
    methods: list[CompensationMethod] = Field(default_factory=_none_only, min_length=1, max_length=3)
    periphery: PeripherySpec = Field(default_factory=PeripherySpec)
    repeats: int = Field(
        1, ge=1, le=MAX_REPEATS,
        description='at "now": a fresh read each; at a stored readout: fresh periphery noise each',
    )  # fmt: skip
    top_k: int = Field(1, ge=1, le=MAX_TOP_K)
    seed: int = Field(0, ge=0, le=MAX_ID, description="of the periphery noise")
    calibration_images: int | None = Field(None, ge=1, le=50_000, description=CALIBRATION_IMAGES_DOC)
    gdc_statistic: GdcStatistic = Field(DEFAULT_GDC_STATISTIC, description=GDC_STATISTIC_DOC)
    series: str | None = Field(
        None, min_length=1, max_length=MAX_SERIES_CHARS, pattern=SERIES_PATTERN,
        description="the accuracy-vs-time series this inference belongs to (a re-evaluation)",
    )  # fmt: skip

    def settings(self, repeats: int | None = None) -> InferenceSettings:
        """The compute core's settings (`repeats` overrides, e.g. one per fresh read)."""
        return InferenceSettings(
            methods=tuple(self.methods), periphery=self.periphery.analog_io(),
            repeats=self.repeats if repeats is None else repeats, top_k=self.top_k, seed=self.seed,
        )  # fmt: skip


class ReevaluationSpec(RequestModel):
    """Evaluate a range of stored readouts again with other settings, as a new series of the
    experiment's accuracy vs time: one inference per readout, each tagged with `series`."""

    model_config = ConfigDict(frozen=True)  # and RequestModel's: extra fields and NaN refused
    series: str = Field(min_length=1, max_length=MAX_SERIES_CHARS, pattern=SERIES_PATTERN,
                        description='its name in the accuracy-vs-time table, e.g. "adc6"')  # fmt: skip
    first_readout_id: int = Field(ge=1, le=MAX_ID, description="the range's first readout of this experiment")
    last_readout_id: int = Field(ge=1, le=MAX_ID, description="its last (inclusive)")
    dataset_id: int = Field(ge=1, le=MAX_ID, description="GET /datasets lists them")
    methods: list[CompensationMethod] = Field(default_factory=_none_only, min_length=1, max_length=3)
    periphery: PeripherySpec = Field(default_factory=PeripherySpec)
    seed: int = Field(0, ge=0, le=MAX_ID, description="of the periphery noise")
    calibration_images: int | None = Field(None, ge=1, le=50_000, description=CALIBRATION_IMAGES_DOC)
    gdc_statistic: GdcStatistic = Field(DEFAULT_GDC_STATISTIC, description=GDC_STATISTIC_DOC)

    def at(self, readout_id: int) -> InferenceSpec:
        """The inference of one readout of the range."""
        fields = self.model_dump(exclude={"first_readout_id", "last_readout_id"})
        return InferenceSpec.model_validate({**fields, "at": readout_id})

"""A network's analog layers by architecture, and which of them an experiment keeps digital.

Every stored network is a registered architecture with its weights, so the names of its
analog (conv and linear) layers depend on the architecture alone: they are taken once per
architecture (a ResNet-34 build is ~1 s), and a submission's `mapping.digital_layers`
is checked against them before anything is queued, as the program job will apply it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from torch import nn

from hwctl.experiment_spec import MappingSpec
from hwctl.mapping import analog_names
from hwctl.nn.conductance import analog_modules, first_and_last_layers
from hwctl.nn.models import model_spec


@dataclass(frozen=True)
class AnalogLayers:
    """A network's analog layer names in forward order, with its first and last."""

    names: tuple[str, ...]
    first_and_last: tuple[str, str]

    @classmethod
    def of(cls, model: nn.Module) -> AnalogLayers:
        return cls(tuple(analog_modules(model)), first_and_last_layers(model))

    def kept_digital(self, mapping: MappingSpec) -> tuple[str, ...]:
        """The layers `mapping` keeps digital; MappingError (listing the valid names) if it
        names a layer the network does not have or leaves none on the chip."""
        digital = mapping.kept_digital(self.first_and_last)
        analog_names(self.names, digital)
        return digital


@cache
def architecture_layers(arch: str) -> AnalogLayers:
    """A registered architecture's analog layers (built once per architecture)."""
    return AnalogLayers.of(model_spec(arch).build())

"""A network's analog layers, and which of them an experiment keeps digital.

The names come from the network's spec (`hwctl.nn.network_spec`: the registry's for a
registered architecture, the graph's for an uploaded one), and a submission's
`mapping.digital_layers` is checked against them before anything is queued, as the
program job will apply it.
"""

from __future__ import annotations

from dataclasses import dataclass

from hwctl.experiment_spec import MappingSpec
from hwctl.mapping import analog_names
from hwctl.nn.network_spec import NetworkSpec


@dataclass(frozen=True)
class AnalogLayers:
    """A network's analog layer names in forward order, with its first and last."""

    names: tuple[str, ...]
    first_and_last: tuple[str, str]

    @classmethod
    def of(cls, spec: NetworkSpec) -> AnalogLayers:
        return cls(spec.analog_layers, spec.first_and_last)

    def kept_digital(self, mapping: MappingSpec) -> tuple[str, ...]:
        """The layers `mapping` keeps digital; MappingError (listing the valid names) if it
        names a layer the network does not have or leaves none on the chip."""
        digital = mapping.kept_digital(self.first_and_last)
        analog_names(self.names, digital)
        return digital

"""The base of every request body the API validates (experiment, inference, station, data set).

Unknown fields are refused, no float may be NaN or infinite, and a JSON true/false is never
read as a number: pydantic's lax mode turns `true` into 1 in an int or float field, so
`"at": true` asked for readout 1 and `"offsets_s": [25, true]` a readback at 1 s.
"""

from __future__ import annotations

from typing import Any, get_args

from pydantic import BaseModel, ConfigDict, model_validator


def _admits_bool(annotation: Any) -> bool:
    """Whether a field's type takes a bool anywhere (`bool`, `bool | None`, `list[bool]`)."""
    return annotation is bool or any(_admits_bool(arg) for arg in get_args(annotation))


def _holds_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return True
    return isinstance(value, list | tuple) and any(_holds_bool(item) for item in value)


class RequestModel(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _booleans_are_not_numbers(cls, data: Any) -> Any:
        """422 for true/false in a field that takes none (nested models check their own)."""
        if isinstance(data, dict):
            for name, field in cls.model_fields.items():
                key = field.alias or name
                if key in data and not _admits_bool(field.annotation) and _holds_bool(data[key]):
                    raise ValueError(f"{key}: true/false is not a value of this field")
        return data

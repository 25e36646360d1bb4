"""What every config section shares: strict models (unknown keys and booleans-for-numbers are
errors)."""

from __future__ import annotations

from typing import Any, get_args

from pydantic import BaseModel, ConfigDict, model_validator


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @model_validator(mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, data: Any) -> Any:
        # pydantic takes true/false as 1/0 for a number; `epochs: true` is a mistake, not 1
        if isinstance(data, dict):
            for name, value in data.items():
                field = cls.model_fields.get(name)
                if isinstance(value, bool) and field is not None and _numeric(field.annotation):
                    raise ValueError(f"{name}: expected a number, got the boolean {value}")
        return data


def _numeric(annotation: Any) -> bool:
    """True for int / float / a union of them with None (not for bool or anything else)."""
    args = get_args(annotation) or (annotation,)
    kinds = {a for a in args if a is not type(None)}
    return bool(kinds) and kinds <= {int, float}

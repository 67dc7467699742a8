"""Marshmallow schemas for every input (service calls, forms, JSON)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from marshmallow import Schema, ValidationError

from ..errors import InvalidInput


def load(schema: Schema, data: Mapping[str, Any]) -> dict[str, Any]:
    """Validate ``data`` with ``schema``; :class:`InvalidInput` with field messages otherwise."""
    try:
        result = schema.load(data)
    except ValidationError as exc:
        messages = exc.messages if isinstance(exc.messages, dict) else {"_schema": exc.messages}
        raise InvalidInput(messages) from None
    return dict(result)


__all__ = ["load"]

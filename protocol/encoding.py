"""Canonical encoding: sorted keys, no insignificant whitespace, UTF-8, finite numbers only.

The bytes produced here are what gets signed and what travels; a receiver verifies the exact bytes it
received and only then parses them, so a re-serialisation can never change what a signature covers.
"""

import json
from typing import Any

from protocol.errors import MalformedMessage


def canonical_bytes(value: Any) -> bytes:
    try:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError as e:  # NaN or infinity: not representable canonically
        raise MalformedMessage(f"value cannot be encoded canonically: {e}") from e
    return text.encode("utf-8")


def parse_canonical(data: bytes) -> Any:
    try:
        return _DECODER.decode(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MalformedMessage(f"not valid UTF-8 JSON: {e}") from e


def _reject_constant(name: str) -> Any:
    raise MalformedMessage(f"non-finite number {name} is not allowed")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)  # one for all: json.loads(..., kw) builds one per call

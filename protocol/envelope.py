"""Signed envelopes: `{"body": <canonical JSON text>, "sig": <Ed25519 signature of body's UTF-8 bytes>}`.

The body travels as the exact text that was signed; receivers verify those bytes, then parse them.
"""

from dataclasses import dataclass
from typing import Callable, Generic, Optional, TypeVar

from pydantic import ValidationError

from protocol.encoding import canonical_bytes, parse_canonical
from protocol.errors import MalformedMessage, OversizedMessage, UnknownSender, UnsupportedVersion
from protocol.messages import Message
from protocol.signing import SigningKey, verify
from protocol.version import is_supported

MAX_ENVELOPE_BYTES = 16 * 1024
M = TypeVar("M", bound=Message)


def seal(message: Message, key: SigningKey) -> bytes:
    return seal_many([message], key)[0]


def seal_many(messages: list[Message], key: SigningKey) -> list[bytes]:
    """`seal` for each."""
    bodies = [canonical_bytes(message.model_dump(mode="json")) for message in messages]
    return [canonical_bytes({"body": body.decode("utf-8"), "sig": sig}) for body, sig in zip(bodies, key.sign_many(bodies))]


@dataclass(frozen=True)
class Opened:
    body: bytes
    signature: str
    fields: dict


def open_envelope(data: bytes, max_bytes: int = MAX_ENVELOPE_BYTES) -> Opened:
    """Split an envelope into the signed bytes and their parsed fields; nothing is trusted yet."""
    if len(data) > max_bytes:
        raise OversizedMessage(f"message of {len(data)} bytes exceeds the limit of {max_bytes}")
    outer = parse_canonical(data)
    if not isinstance(outer, dict) or not isinstance(outer.get("body"), str) or not isinstance(outer.get("sig"), str):
        raise MalformedMessage("envelope must be an object with string fields 'body' and 'sig'")
    body = outer["body"].encode("utf-8")
    fields = parse_canonical(body)
    if not isinstance(fields, dict):
        raise MalformedMessage("envelope body must be a JSON object")
    return Opened(body=body, signature=outer["sig"], fields=fields)


def parse_body(opened: Opened, model: type[M]) -> M:
    version = opened.fields.get("protocol_version")
    if not isinstance(version, int) or not is_supported(version):
        raise UnsupportedVersion(f"protocol version {version!r} is not supported")
    try:
        return model.model_validate(opened.fields)
    except ValidationError as e:
        raise MalformedMessage(f"invalid {model.__name__}: {e.error_count()} error(s): {_first_error(e)}") from e


@dataclass(frozen=True)
class Unverified(Generic[M]):
    """A well-formed message and what its signature check needs (protocol.signing.verify / verify_many)."""

    message: M
    public_key: str
    signature: str
    body: bytes


def read_envelope(
    data: bytes, model: type[M], public_key_for: Callable[[M], Optional[str]], max_bytes: int = MAX_ENVELOPE_BYTES
) -> Unverified[M]:
    """Open and validate an envelope and look up its signer from the message itself; all but the signature check."""
    opened = open_envelope(data, max_bytes)
    message = parse_body(opened, model)
    public_key = public_key_for(message)
    if public_key is None:
        raise UnknownSender("the sender is not registered")
    return Unverified(message, public_key, opened.signature, opened.body)


def verify_envelope(
    data: bytes, model: type[M], public_key_for: Callable[[M], Optional[str]], max_bytes: int = MAX_ENVELOPE_BYTES
) -> M:
    """Open, validate and verify an envelope whose signer is looked up from the message itself."""
    unverified = read_envelope(data, model, public_key_for, max_bytes)
    verify(unverified.public_key, unverified.signature, unverified.body)
    return unverified.message


def _first_error(error: ValidationError) -> str:
    first = error.errors()[0]
    location = ".".join(str(part) for part in first["loc"]) or "message"
    return f"{location}: {first['msg']}"

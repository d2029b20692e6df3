"""Errors raised for network input that must be rejected. `reason` is what the ledger and metrics record."""


class ProtocolError(ValueError):
    reason = "protocol_error"


class MalformedMessage(ProtocolError):
    reason = "malformed"


class OversizedMessage(MalformedMessage):
    reason = "oversized"


class BadSignature(ProtocolError):
    reason = "bad_signature"


class UnsupportedVersion(ProtocolError):
    reason = "unsupported_version"


class ReplayedMessage(ProtocolError):
    reason = "replayed"


class UnknownSender(ProtocolError):
    reason = "unknown_sender"


class StaleMessage(ProtocolError):
    """Its `time` is too far from the receiver's clock: an old message replayed, or a wrong clock."""

    reason = "stale"

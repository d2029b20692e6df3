"""Fuzzing the report decoder (protocol/envelope.py, messages.py): generated envelopes, from valid-looking ones
with hostile values (huge numbers, NaN and infinities, wrong types, unicode, nested JSON) to byte-level
mutations of genuine ones (bit flips, truncation, insertions, splices). Every input either decodes to a message
that can be encoded again or raises a ProtocolError with a reason; nothing else escapes, and a signature only
ever verifies the exact body its key signed. The strategies here also drive tests/coordinator/test_fuzz_*.py."""

import json
import math
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.encoding import canonical_bytes
from protocol.envelope import MAX_ENVELOPE_BYTES, open_envelope, parse_body, verify_envelope
from protocol.errors import ProtocolError
from protocol.messages import (ContributionReport, Message, NodeAttach, NodeStatus, Receipt, TeamAction,
                               VolunteerRegistration)
from protocol.signing import SigningKey, b64decode

FUZZ_SETTINGS = dict(deadline=None, derandomize=True, database=None,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])  # fmt: skip

# --- hostile values ----------------------------------------------------------------------------------------------
EDGE_INTS = (0, 1, -1, 2**31, 2**53, 2**53 + 1, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**30, 10**400)
EDGE_FLOATS = (0.0, -0.0, 1e-320, 1e308, -1e308, 1.7976931348623157e308, math.nan, math.inf, -math.inf, 0.5)
EDGE_TEXT = ("", " ", "\x00", "\ud800", "\u202e", "é", "e\u0301", "<script>", "a" * 70, "x" * 20_000, "0" * 32,
             "spirals", "report", "status", "💥", "\\u0000", "null")  # fmt: skip
json_scalars = (st.none() | st.booleans() | st.sampled_from(EDGE_INTS) | st.integers() | st.sampled_from(EDGE_FLOATS)
                | st.floats() | st.sampled_from(EDGE_TEXT) | st.text(max_size=20))  # fmt: skip
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=6)  # fmt: skip
deeply_nested = st.integers(min_value=1, max_value=5000).map(lambda depth: json.loads("[" * min(depth, 900) + "]" * min(depth, 900)))

MODELS: dict[str, type[Message]] = {"report": ContributionReport, "status": NodeStatus, "registration": VolunteerRegistration,
                                    "attach": NodeAttach, "team_action": TeamAction, "receipt": Receipt}  # fmt: skip


def valid_fields(kind: str, key: SigningKey, seq: int = 1, now: float | None = None, node_id: str | None = None) -> dict:
    """A message of `kind` as an honest sender would write it."""
    now = time.time() if now is None else now
    node_id = node_id or key.node_id
    return {
        "report": {"kind": "report", "protocol_version": 1, "node_id": node_id, "swarm_id": "spirals", "seq": seq,
                   "epoch": seq, "samples": 1000, "compute_seconds": 1.5, "device": "cpu", "loss": 0.5,
                   "group_size": 2, "bytes_sent": 10, "bytes_received": 10, "time": now},
        "status": {"kind": "status", "protocol_version": 1, "node_id": node_id, "swarm_id": "spirals", "state": "online",
                   "time": now, "epoch": seq, "samples_per_second": 100.0, "device": "cpu"},
        "registration": {"kind": "registration", "protocol_version": 1, "name": f"fuzz-{seq}", "team": None,
                         "public_key": key.public_key, "time": now},
        "attach": {"kind": "attach", "protocol_version": 1, "public_key": key.public_key, "time": now},
        "team_action": {"kind": "team_action", "protocol_version": 1, "action": "create", "team": f"team-{seq}",
                        "public_key": key.public_key, "time": now},
        "receipt": {"kind": "receipt", "protocol_version": 1, "node_id": node_id, "swarm_id": "spirals",
                    "last_seq": seq, "time": now},
    }[kind]  # fmt: skip


def encode_body(fields) -> bytes:
    """JSON as a careless or hostile client writes it: NaN and lone surrogates allowed (the canonical encoder
    refuses them), so they reach the receiver's parser."""
    try:
        return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode("ascii")


def envelope(body: bytes, sig: str) -> bytes:
    text = body.decode("utf-8", errors="replace")  # a flipped body byte may have broken its UTF-8
    return json.dumps({"body": text, "sig": sig}, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode()


# One change to a genuine message: (what, argument). Most keep the message structurally valid, so parsing,
# validation, version, signature and the receiver's own checks all run; the rest break it at some byte.
field_changes = st.tuples(st.just("field"), st.tuples(st.sampled_from(
    ("kind", "protocol_version", "node_id", "swarm_id", "seq", "epoch", "samples", "compute_seconds", "device", "loss",
     "group_size", "bytes_sent", "time", "state", "name", "team", "public_key", "action", "last_seq", "peer_id",
     "extra")), json_values | deeply_nested))  # fmt: skip
mutations = st.one_of(
    st.just(("none", None)),
    field_changes,
    st.tuples(st.just("drop_field"), st.sampled_from(("kind", "protocol_version", "node_id", "seq", "time", "samples"))),
    st.tuples(st.just("wrong_key"), st.none()),
    st.tuples(st.just("sig"), st.sampled_from(("", "A" * 86, "@" * 86, "A" * 10_000, "=", "AAAA" * 22))),
    st.tuples(st.just("bit_flip"), st.tuples(st.integers(0, 10_000), st.integers(0, 7))),
    st.tuples(st.just("truncate"), st.integers(0, 10_000)),
    st.tuples(st.just("insert"), st.tuples(st.integers(0, 10_000), st.binary(min_size=1, max_size=8))),
    st.tuples(st.just("body_flip"), st.tuples(st.integers(0, 10_000), st.integers(0, 7))),
    st.tuples(st.just("outer"), json_values),  # the whole envelope replaced by some JSON
    st.tuples(st.just("bytes"), st.binary(max_size=64)),
    st.tuples(st.just("oversized"), st.integers(MAX_ENVELOPE_BYTES - 64, MAX_ENVELOPE_BYTES + 64)),
)


def apply_mutation(fields: dict, key: SigningKey, other: SigningKey, mutation: tuple) -> bytes:
    """The bytes of `fields` sealed by `key`, after one mutation."""
    what, arg = mutation
    fields = dict(fields)
    signer = key
    if what == "field":
        fields[arg[0]] = arg[1]
    elif what == "drop_field":
        fields.pop(arg, None)
    elif what == "wrong_key":
        signer = other
    body = encode_body(fields)
    sig = signer.sign(body)
    if what == "sig":
        sig = arg
    elif what == "body_flip":
        index = arg[0] % max(1, len(body))
        body = body[:index] + bytes([body[index] ^ (1 << arg[1])]) + body[index + 1:] if body else body
    data = envelope(body, sig)
    if what == "bit_flip":
        index = arg[0] % len(data)
        data = data[:index] + bytes([data[index] ^ (1 << arg[1])]) + data[index + 1:]
    elif what == "truncate":
        data = data[: arg % len(data)]
    elif what == "insert":
        index = arg[0] % len(data)
        data = data[:index] + arg[1] + data[index:]
    elif what == "outer":
        data = encode_body(arg)
    elif what == "bytes":
        data = arg
    elif what == "oversized":
        data = data + b" " * max(0, arg - len(data))
    return data


# --- the decoder's contract ----------------------------------------------------------------------------------
KEY, OTHER = SigningKey.generate(), SigningKey.generate()
PUBLIC_KEYS = {KEY.node_id: KEY.public_key, OTHER.node_id: OTHER.public_key}


def decode(data: bytes, model: type[Message]):
    """verify_envelope as a receiver calls it: the message, or the ProtocolError it raised (anything else fails)."""
    key_for = (lambda m: PUBLIC_KEYS.get(m.node_id)) if "node_id" in model.model_fields else (lambda m: m.public_key)
    try:
        return verify_envelope(data, model, key_for)
    except ProtocolError as e:
        assert e.reason and str(e), e
        return e


@settings(max_examples=600, **FUZZ_SETTINGS)
@given(kind=st.sampled_from(tuple(MODELS)), mutation=mutations, seq=st.integers(1, 5))
def test_the_decoder_accepts_only_genuine_messages_and_refuses_the_rest_with_a_reason(kind, mutation, seq):
    fields = valid_fields(kind, KEY, seq)
    data = apply_mutation(fields, KEY, OTHER, mutation)
    result = decode(data, MODELS[kind])
    if isinstance(result, ProtocolError):
        return
    # Decoded: it must be what KEY signed (no mutation forges a signature) and encodable again as it is.
    opened = open_envelope(data)
    assert b64decode(KEY.sign(opened.body)) == b64decode(opened.signature), mutation
    again = canonical_bytes(result.model_dump(mode="json"))
    assert parse_body(open_envelope(canonical_bytes({"body": again.decode(), "sig": opened.signature})), MODELS[kind]) == result


@settings(max_examples=300, **FUZZ_SETTINGS)
@given(data=st.binary(max_size=300) | json_values.map(encode_body), kind=st.sampled_from(tuple(MODELS)))
def test_arbitrary_bytes_never_escape_as_anything_but_a_protocol_error(data, kind):
    assert isinstance(decode(data, MODELS[kind]), ProtocolError)

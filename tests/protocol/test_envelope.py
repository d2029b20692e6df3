import json

import pytest

from protocol.encoding import canonical_bytes
from protocol.envelope import open_envelope, seal, verify_envelope
from protocol.errors import BadSignature, MalformedMessage, OversizedMessage, UnknownSender, UnsupportedVersion
from protocol.messages import ContributionReport, VolunteerRegistration
from protocol.signing import SigningKey

KEY = SigningKey.generate()


def report(**overrides) -> ContributionReport:
    fields = dict(node_id=KEY.node_id, swarm_id="spirals", seq=1, epoch=3, samples=512, compute_seconds=1.5,
                  device="cpu", loss=0.7, group_size=2, time=1700000000.0)  # fmt: skip
    return ContributionReport(**{**fields, **overrides})


def lookup(message):
    return KEY.public_key if message.node_id == KEY.node_id else None


def test_round_trip():
    assert verify_envelope(seal(report(), KEY), ContributionReport, lookup) == report()


def test_canonical_encoding_is_order_independent_and_compact():
    assert canonical_bytes({"b": 1, "a": [1.5, "é"]}) == canonical_bytes({"a": [1.5, "é"], "b": 1})
    assert canonical_bytes({"b": 1, "a": 2}) == b'{"a":2,"b":1}'
    with pytest.raises(MalformedMessage):
        canonical_bytes({"x": float("nan")})


def test_unknown_fields_are_ignored_so_old_readers_survive_new_writers():
    body = report().model_dump(mode="json") | {"future_field": {"nested": True}}
    data = canonical_bytes({"body": canonical_bytes(body).decode(), "sig": KEY.sign(canonical_bytes(body))})
    assert verify_envelope(data, ContributionReport, lookup).samples == 512


def tampered(data: bytes) -> bytes:
    outer = json.loads(data)
    outer["body"] = outer["body"].replace('"samples":512', '"samples":5120')
    return canonical_bytes(outer)


@pytest.mark.parametrize(
    "data, error",
    [
        (b"not json", MalformedMessage),
        (b'{"body": 1, "sig": "x"}', MalformedMessage),
        (b"x" * 20000, OversizedMessage),
        (None, BadSignature),
        (seal(report(protocol_version=99), KEY), UnsupportedVersion),
        (seal(report(samples=5), SigningKey.generate()), BadSignature),
        (seal(report(node_id="0" * 32), KEY), UnknownSender),
    ],
)
def test_bad_input_is_rejected_with_its_reason(data, error):
    data = tampered(seal(report(), KEY)) if data is None else data
    with pytest.raises(error):
        verify_envelope(data, ContributionReport, lookup)


def test_wrong_field_types_are_malformed_not_coerced():
    body = report().model_dump(mode="json") | {"samples": "512"}
    data = canonical_bytes({"body": canonical_bytes(body).decode(), "sig": KEY.sign(canonical_bytes(body))})
    with pytest.raises(MalformedMessage):
        verify_envelope(data, ContributionReport, lookup)


def test_registration_names_are_validated():
    good = VolunteerRegistration(name="  <b>Ada</b> ", public_key=KEY.public_key, time=1.0)
    assert good.name == "<b>Ada</b>"
    for bad in ["", "x" * 41, "tab\there", "zero\u200bwidth"]:
        with pytest.raises(ValueError):
            VolunteerRegistration(name=bad, public_key=KEY.public_key, time=1.0)


def test_open_envelope_exposes_the_exact_signed_bytes():
    data = seal(report(), KEY)
    opened = open_envelope(data)
    assert KEY.sign(opened.body) == opened.signature

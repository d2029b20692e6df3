"""Display and team names: one rule in protocol/messages.py, applied by the node before sending and by the
coordinator on receipt."""

import time

import pytest
from pydantic import ValidationError

from node.config import NodeConfig
from protocol.messages import NAME_MAX_CHARS, TeamAction, VolunteerRegistration, check_name, clean_display_name
from protocol.signing import SigningKey

KEY = SigningKey.generate().public_key


def test_names_are_trimmed_and_nfc_normalised():
    assert clean_display_name("  alice \t") == "alice"
    assert clean_display_name("Ren\u0065\u0301e") == "Ren\u00e9e"
    assert clean_display_name("x" * NAME_MAX_CHARS) == "x" * NAME_MAX_CHARS
    # NFC first: 40 letters with combining accents are 80 code points but 40 characters once composed.
    assert clean_display_name("e\u0301" * NAME_MAX_CHARS) == "\u00e9" * NAME_MAX_CHARS


def test_html_and_other_scripts_are_plain_text():
    for name in ("<script>alert(1)</script>", "a & b", "\"quoted\" 'name'", "名前", "🦊 fox", "AC/DC fans"):
        assert clean_display_name(name) == name


@pytest.mark.parametrize("name, reason", [
    ("", "must not be empty"),
    (" \t ", "must not be empty"),
    ("x" * 10_240, f"must be at most {NAME_MAX_CHARS} characters, got 10240"),
    ("x" * (NAME_MAX_CHARS + 1), f"got {NAME_MAX_CHARS + 1}"),
    ("a\x00b", "control characters (U+0000 at character 2)"),
    ("esc\x1b[31m", "control characters (U+001B at character 4)"),
    ("two\nlines", "control characters"),
    ("zero\u200bwidth", "invisible formatting characters (U+200B"),
    ("evil\u202eflip", "invisible formatting characters (U+202E"),
    ("line\u2028sep", "line break characters"),
])  # fmt: skip
def test_refusals_say_why_without_repeating_the_name(name, reason):
    with pytest.raises(ValueError) as refused:
        clean_display_name(name)
    assert reason in str(refused.value) and len(str(refused.value)) < 120


def test_messages_apply_the_rule():
    assert VolunteerRegistration(name=" bob ", team=" red ", public_key=KEY, time=1.0).name == "bob"
    assert VolunteerRegistration(name="bob", team="  ", public_key=KEY, time=1.0).team is None  # blank: no team
    for fields in ({"name": "x" * 10_240}, {"name": "ok", "team": "bad\x07"}):
        with pytest.raises(ValidationError):
            VolunteerRegistration(**{"public_key": KEY, "time": 1.0, **fields})
    with pytest.raises(ValidationError, match="at most"):
        TeamAction(action="join", team="t" * 100, public_key=KEY, time=time.time())


def test_check_name_is_one_sentence_naming_the_option():
    with pytest.raises(ValueError, match=r"^--team must not be empty$"):
        check_name("", "--team")


def test_the_node_refuses_a_bad_name_before_any_network():
    with pytest.raises(ValueError, match="^--name must be at most"):
        NodeConfig(coordinator_url="http://127.0.0.1:9", name="x" * 10_240)
    with pytest.raises(ValueError, match="^--team must not contain control"):
        NodeConfig(coordinator_url="http://127.0.0.1:9", team="a\x1bb")
    config = NodeConfig(coordinator_url="http://127.0.0.1:9", name=" Ren\u0065\u0301e ", team=" ")
    assert config.name == "Ren\u00e9e"


def test_hearth_join_with_a_bad_name_fails_in_one_sentence(tmp_path):
    from tests.conftest import run_hearth

    # Port 9 (discard) is closed here: reaching the network would fail differently, and later.
    result = run_hearth("join", "http://127.0.0.1:9", "--data-dir", str(tmp_path), "--name", "x" * 10_240)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == "Error: --name must be at most 40 characters, got 10240"

"""The one KB-number rule: strict for what people type, lenient for what Azure sends back."""

from __future__ import annotations

import pytest

from shared.model.kb import MAX_KB_DIGITS, MIN_KB_DIGITS, kb_digits, parse_kb

ACCEPTED = [
    ("5034441", "5034441"),  # Azure's kbId, and what kbNumbersToInclude takes
    ("KB5034441", "5034441"),  # how people write it
    ("kb5034441", "5034441"),
    ("KB 5034441", "5034441"),
    ("kb 5034441", "5034441"),
    ("  KB5034441\t", "5034441"),
    ("890830", "890830"),  # the malicious software removal tool: six digits
    ("1" * MIN_KB_DIGITS, "1" * MIN_KB_DIGITS),
    ("9" * MAX_KB_DIGITS, "9" * MAX_KB_DIGITS),
    ("0012345", "0012345"),  # kept as written: a KB number is text, not an integer
]
REFUSED = [
    "",
    "   ",
    "KB",
    "KB12",  # too short
    "1" * (MIN_KB_DIGITS - 1),
    "1" * (MAX_KB_DIGITS + 1),  # too long
    "KB503444100",
    "Q12345",  # the old Knowledge Base "Q" articles are not Windows Update KBs
    "KB-5034441",
    "KB5034441a",
    "5034 441",
    "KBKB5034441",
    "KB5034441, KB890830",
    "٥٠٣٤٤٤١",  # Arabic-Indic digits: str.isdigit() says yes, Azure would not
]


@pytest.mark.parametrize(("text", "digits"), ACCEPTED)
def test_parse_kb_returns_the_digits(text, digits):
    assert parse_kb(text) == digits


@pytest.mark.parametrize("text", REFUSED)
def test_parse_kb_refuses_anything_else_naming_the_value_and_the_rule(text):
    with pytest.raises(ValueError) as caught:
        parse_kb(text)
    assert str(caught.value) == f"{text!r} is not a KB number (4-8 digits, optionally prefixed with KB)"


@pytest.mark.parametrize(("text", "digits"), ACCEPTED)
def test_kb_digits_reads_a_kb_id_as_parse_kb_does(text, digits):
    assert kb_digits(text) == digits


@pytest.mark.parametrize("text", [None, *REFUSED])
def test_kb_digits_is_none_for_a_missing_or_malformed_kb_id(text):
    assert kb_digits(text) is None

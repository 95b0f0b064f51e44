"""KB article numbers: the one rule for reading them from Azure results and from people."""

from __future__ import annotations

import re

# Windows Update KB numbers have 6 or 7 digits today (KB890830, KB5034441); 4 to 8 is the range
# the deployment form has always accepted and the ARM stand-in's catalogue holds
# (local/arm/catalogue.py), with room on both sides.
MIN_KB_DIGITS = 4
MAX_KB_DIGITS = 8
# Azure sends ``kbId`` as digits ("5034441") and takes digits in ``kbNumbersToInclude/Exclude``
# (AZURE-FACTS, patch operations); people write "KB5034441", "kb5034441", "KB 5034441" or the digits.
# ASCII digits only: ``\d`` and ``str.isdigit`` also take other scripts' digits, which Azure would not.
KB_PATTERN = re.compile(
    rf"^\s*(?:KB\s*)?([0-9]{{{MIN_KB_DIGITS},{MAX_KB_DIGITS}}})\s*$", re.IGNORECASE
)
# The same rule for JSON Schema, which has no flags: "KB" in capitals stands for every case.
KB_SCHEMA_PATTERN = KB_PATTERN.pattern


def parse_kb(text: str) -> str:
    """The digits of a KB number a person typed ("KB5034441" -> "5034441"); ValueError naming it if not."""
    match = KB_PATTERN.match(text) if isinstance(text, str) else None
    if match is None:
        rule = f"{MIN_KB_DIGITS}-{MAX_KB_DIGITS} digits, optionally prefixed with KB"
        raise ValueError(f"{text!r} is not a KB number ({rule})")
    return match[1]


def kb_digits(text: str | None) -> str | None:
    """A patch's ``kbId`` as digits, or None when it is missing or not a KB number.

    Never raises: one odd value in a result must not lose the machine's other patches; a patch
    without a KB is keyed by its patch id instead.
    """
    match = KB_PATTERN.match(text) if isinstance(text, str) else None
    return match[1] if match else None

"""One update at one exact version: how people write it, how tables key it, what rows name."""

from __future__ import annotations

import pytest

from shared.governance.patch_refs import PatchRef, PatchRefError, parse_patch_ref, parse_table_key, ref_of_row
from shared.model.machines import OsType


def test_a_windows_update_is_its_kb_however_it_is_written() -> None:
    for text in ("KB5034441", "kb5034441", "5034441", "KB 5034441"):
        ref = parse_patch_ref("Windows", text)
        assert (ref.key, ref.update_key, ref.table_key) == ("KB5034441", "KB5034441", "Windows|KB5034441")
    assert parse_patch_ref(OsType.WINDOWS, "KB5034441").to_json() == {
        "osType": "Windows", "key": "KB5034441", "kbId": "5034441"}


def test_a_linux_update_is_a_package_at_an_exact_version() -> None:
    ref = parse_patch_ref("Linux", "openssl=3.0.2-0ubuntu1.12")
    assert ref.key == "openssl=3.0.2-0ubuntu1.12"  # the include mask that pins the version
    assert ref.update_key == "openssl"  # the gap key of the assessment inventory
    assert parse_table_key(ref.table_key) == ref
    assert ref != parse_patch_ref("Linux", "openssl=3.0.2-0ubuntu1.13")
    assert parse_patch_ref("Linux", "libc6=2:2.35-0ubuntu3.6").version == "2:2.35-0ubuntu3.6"


@pytest.mark.parametrize(("os_type", "text", "field"), [
    ("Linux", "openssl", "key"),  # no version: not one update
    ("Linux", "openssl=3.*", "key"),  # a wildcard is a mask, not a version
    ("Linux", "open/ssl=1", "key"),  # '/' cannot be in a Table key
    ("Windows", "KB12", "key"),
    ("Windows", "openssl=1.0", "key"),
    ("MacOS", "KB5034441", "osType"),
])
def test_what_is_not_one_update_is_refused_naming_the_field(os_type: str, text: str, field: str) -> None:
    with pytest.raises(PatchRefError) as caught:
        parse_patch_ref(os_type, text)
    assert caught.value.field == field


def test_a_ref_must_be_whole() -> None:
    with pytest.raises(PatchRefError):
        PatchRef(OsType.LINUX, package="curl")
    with pytest.raises(PatchRefError):
        PatchRef(OsType.WINDOWS, kb="5034441", version="1")


def test_rows_name_their_update_or_none() -> None:
    assert ref_of_row("Windows", {"KBID": "5034441"}) == PatchRef(OsType.WINDOWS, kb="5034441")
    assert ref_of_row("Windows", {"KBID": None, "UpdateTitle": "Defender definitions"}) is None
    assert ref_of_row("Linux", {"PackageName": "curl", "PackageVersion": "7.81.0-1ubuntu1.16"}) == PatchRef(
        OsType.LINUX, package="curl", version="7.81.0-1ubuntu1.16")
    assert ref_of_row("Linux", {"PackageName": "curl"}) is None

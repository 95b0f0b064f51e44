import pytest

from shared.model.classification import (
    Classification,
    UnknownClassification,
    linux_combination_error,
    read_class,
    request_classes,
    to_api,
    to_display,
)
from shared.model.machines import OsType


def test_windows_api_names_map_to_the_legacy_display_names():
    assert to_display(OsType.WINDOWS, ["UpdateRollUp"]) is Classification.UPDATE_ROLLUPS
    assert to_display(OsType.WINDOWS, ["Updates", "Security"]) is Classification.SECURITY
    assert to_display(OsType.WINDOWS, []) is Classification.UPDATES


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Security Updates", Classification.SECURITY),
        ("Critical Updates", Classification.CRITICAL),
        ("Definition Updates", Classification.DEFINITION),
        ("Update Rollups", Classification.UPDATE_ROLLUPS),
        ("Feature Packs", Classification.FEATURE_PACKS),
        ("Service Packs", Classification.SERVICE_PACKS),
        ("Tools", Classification.TOOLS),
        ("Updates", Classification.UPDATES),
        ("Drivers", Classification.UPDATES),
        ("Upgrades", Classification.UPDATES),
        ("SECURITY UPDATES", Classification.SECURITY),
        ("updaterollup", Classification.UPDATE_ROLLUPS),  # Arc's count key, read as any other spelling
    ],
)
def test_windows_update_names_in_results_are_read(name, expected):
    assert read_class(OsType.WINDOWS, name) is expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Critical", Classification.CRITICAL),
        ("Security", Classification.SECURITY),
        ("Security-ESM", Classification.SECURITY),
        ("security-esm", Classification.SECURITY),
        ("Other", Classification.OTHER),
        ("Unclassified", Classification.OTHER),
    ],
)
def test_the_linux_extensions_names_are_read(name, expected):
    assert read_class(OsType.LINUX, name) is expected


def test_an_unknown_name_goes_to_the_catch_all_class_never_raised():
    assert read_class(OsType.WINDOWS, "Bogus") is Classification.UPDATES
    assert read_class(OsType.LINUX, "FeaturePack") is Classification.OTHER
    assert to_display(OsType.LINUX, ["Bogus", "Security-ESM"]) is Classification.SECURITY


def test_result_names_become_the_request_enum_an_install_selects_by():
    assert request_classes(OsType.WINDOWS, ["Security Updates", "Definition Updates"]) == {
        "Security", "Definition",
    }
    assert request_classes(OsType.LINUX, ["Security-ESM"]) == {"Security"}
    assert request_classes(OsType.LINUX, []) == {"Other"}


def test_user_choices_are_checked_against_the_os():
    with pytest.raises(UnknownClassification, match="accepted"):
        to_api(OsType.WINDOWS, ["Other updates"])
    with pytest.raises(UnknownClassification, match="not a Linux classification"):
        to_api(OsType.LINUX, ["FeaturePack"])


def test_user_choices_become_api_names():
    assert to_api(OsType.LINUX, ["Critical and security updates"]) == ("Critical", "Security")
    assert to_api(OsType.LINUX, ["Other updates", "Security"]) == ("Other", "Security")
    assert to_api(OsType.WINDOWS, ["security updates", "Definition", "Service Packs", "updaterollup"]) == (
        "Security", "Definition", "ServicePack", "UpdateRollUp",
    )


def test_the_linux_agents_invalid_combinations_are_named():
    assert linux_combination_error(["Other", "Critical"]) is not None
    assert "without Critical" in (linux_combination_error(["Other", "Security"]) or "")
    fine_choices = (
        ["Other"], ["Critical"], ["Security"], ["Critical", "Security"], ["Critical", "Security", "Other"],
    )
    for fine in fine_choices:
        assert linux_combination_error(fine) is None

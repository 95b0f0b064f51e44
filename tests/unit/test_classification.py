import pytest

from shared.model.classification import Classification, UnknownClassification, to_api, to_display
from shared.model.machines import OsType


def test_windows_api_names_map_to_the_legacy_display_names():
    assert to_display(OsType.WINDOWS, ["UpdateRollUp"]) is Classification.UPDATE_ROLLUPS
    assert to_display(OsType.WINDOWS, ["Updates", "Security"]) is Classification.SECURITY
    assert to_display(OsType.WINDOWS, []) is Classification.UPDATES


def test_linux_tells_critical_from_security_and_the_rest_is_other():
    assert to_display(OsType.LINUX, ["Security"]) is Classification.SECURITY
    assert to_display(OsType.LINUX, ["Other"]) is Classification.OTHER


def test_classifications_are_checked_against_the_os():
    with pytest.raises(UnknownClassification, match="not a Linux classification"):
        to_display(OsType.LINUX, ["FeaturePack"])
    with pytest.raises(UnknownClassification, match="accepted"):
        to_api(OsType.WINDOWS, ["Other updates"])


def test_user_choices_become_api_names():
    assert to_api(OsType.LINUX, ["Critical and security updates"]) == ("Critical", "Security")
    assert to_api(OsType.LINUX, ["Other updates", "Security"]) == ("Other", "Security")
    assert to_api(OsType.WINDOWS, ["security updates", "Definition", "Service Packs"]) == (
        "Security", "Definition", "ServicePack",
    )

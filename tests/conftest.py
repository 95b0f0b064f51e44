"""Fixtures shared by every tier: Azurite (in memory, one per test session)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from local.azurite import Azurite, start_azurite


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    with start_azurite() as running:
        yield running

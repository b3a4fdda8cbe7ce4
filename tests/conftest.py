"""Shared test fixtures: where the real sample dumps are (../shared/data, or $PAIR_CURATION_DATA)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("PAIR_CURATION_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of real sample inputs; tests that need it are skipped, with the reason, where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real sample data not found at {SHARED_DATA} (set PAIR_CURATION_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def stackexchange_sample() -> Path:
    """The StackExchange slice bundled with the project (a site folder): always present, so the tests that
    need only a real dump use it and never skip."""
    from sources.stackexchange import BUNDLED_SAMPLE

    return Path(BUNDLED_SAMPLE)

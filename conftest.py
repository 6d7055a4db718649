"""This project's own test layout on top of the harness pytest plugin (harness/pytest_plugin.py: the
tier markers, --runslow and the model fixtures; opt-in, so this conftest asks for it).

Here the tier follows the directory a test lives in: tests/unit -> ``unit``, tests/cpu -> ``cpu``,
tests/gpu -> ``cuda``, tests/e2e -> ``e2e``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent
ALPACA_1K = ROOT.parent / "shared" / "data" / "alpaca_data_1k.json"
_TIER_BY_DIR = {"unit": "unit", "cpu": "cpu", "gpu": "cuda", "e2e": "e2e"}

pytest_plugins = ["harness.pytest_plugin"]


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).relative_to(ROOT).parts
        tier = _TIER_BY_DIR.get(parts[1]) if len(parts) > 2 and parts[0] == "tests" else None
        if tier:
            item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(scope="session")
def alpaca_1k() -> Path:
    """The 1,000 real alpaca records shared with CI; tests skip with a reason where it is absent."""
    if not ALPACA_1K.is_file():
        pytest.skip(f"{ALPACA_1K} is absent (shared alpaca data is not part of the project)")
    return ALPACA_1K

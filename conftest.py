"""Test tiers, ``--runslow`` and the session fixtures that resolve each model once.

Tiers follow the research document's four phases and the directory a test lives in:
tests/unit -> ``unit`` (no weights), tests/cpu -> ``cpu`` (real SmolLM2 on CPU, needs --runslow),
tests/gpu -> ``cuda`` (skipped without a GPU), tests/e2e -> ``e2e`` (whole configs, needs --runslow).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent
ALPACA_1K = ROOT.parent / "shared" / "data" / "alpaca_data_1k.json"
_TIER_BY_DIR = {"unit": "unit", "cpu": "cpu", "gpu": "cuda", "e2e": "e2e"}
_SLOW_TIERS = {"cpu", "e2e"}

# Torch uses every core by default; on the 2-core CI machine that is what we want, but keep the
# tokenizers library from forking threads under pytest.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--runslow", action="store_true", default=False, help="run the cpu and e2e tiers (real weights, minutes)"
    )


def pytest_configure(config: pytest.Config) -> None:
    # Weight-loading progress bars from every fixture drown the measured values tests print.
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    runslow = config.getoption("--runslow")
    has_cuda = torch.cuda.is_available()
    for item in items:
        parts = Path(str(item.fspath)).relative_to(ROOT).parts
        tier = _TIER_BY_DIR.get(parts[1]) if len(parts) > 2 and parts[0] == "tests" else None
        if tier:
            item.add_marker(getattr(pytest.mark, tier))
        markers = {m.name for m in item.iter_markers()}
        if markers & _SLOW_TIERS and not runslow:
            item.add_marker(pytest.mark.skip(reason="needs --runslow (real weights, minutes on CPU)"))
        if "cuda" in markers and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)"))


_TIER_SECONDS: dict[str, float] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    tier = next((t for t in ("unit", "cpu", "cuda", "e2e") if t in report.keywords), "other")
    _TIER_SECONDS[tier] = _TIER_SECONDS.get(tier, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Time spent per tier (setup + call + teardown), so CI shows where its budget goes."""
    if _TIER_SECONDS:
        parts = ", ".join(f"{tier} {seconds:.0f} s" for tier, seconds in sorted(_TIER_SECONDS.items()))
        terminalreporter.write_line(f"time per tier: {parts}")


@pytest.fixture(scope="session")
def tiny_llama():
    """The tiny random Llama (2 layers, GQA, byte-level vocab of 259): same architecture, no weights to fetch."""
    from harness.resolve import resolve_model

    return resolve_model("harness/tiny-random-llama")


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2-135M as the user would get it: cache, download, or the bundled real weights."""
    from harness.resolve import resolve_model

    return resolve_model("HuggingFaceTB/SmolLM2-135M")


@pytest.fixture(scope="session")
def tinyllama():
    """TinyLlama-1.1B: real weights when cached, else a random-init stand-in from its exact config."""
    from harness.resolve import resolve_model

    return resolve_model("TinyLlama/TinyLlama-1.1B-Chat-v1.0")


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_llama):
    from harness.loading import load_tokenizer

    return load_tokenizer(tiny_llama.path)


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2):
    from harness.loading import load_tokenizer

    return load_tokenizer(smollm2.path)


@pytest.fixture(scope="session")
def alpaca_1k() -> Path:
    """The 1,000 real alpaca records shared with CI; tests skip with a reason where it is absent."""
    if not ALPACA_1K.is_file():
        pytest.skip(f"{ALPACA_1K} is absent (shared alpaca data is not part of the project)")
    return ALPACA_1K

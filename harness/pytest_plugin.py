"""A pytest plugin: the tier markers, ``--runslow`` and session fixtures that resolve each model once.

Installed with this package (entry point ``pytest11``), so another fine-tuning codebase gets, in its own
tests: markers ``unit``, ``cpu``, ``cuda``, ``e2e``; ``cpu``/``e2e`` tests skipped unless ``--runslow``;
``cuda`` tests skipped without a GPU; and the fixtures ``tiny_llama``, ``smollm2``, ``tinyllama``
(each a ``ResolvedModel``) plus ``tiny_tokenizer`` and ``smollm2_tokenizer``.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

TIERS = {
    "unit": "fast tests, no model weights, no network (Phase 1)",
    "cpu": "real SmolLM2 weights on CPU; needs --runslow (Phase 2)",
    "cuda": "needs a CUDA GPU (Phase 3)",
    "e2e": "whole YAML configs end to end; needs --runslow (Phase 4)",
}
SLOW_TIERS = {"cpu", "e2e"}
_tier_seconds: dict[str, float] = {}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--runslow", action="store_true", default=False, help="run the cpu and e2e tiers (real weights, minutes)"
    )


def pytest_configure(config: pytest.Config) -> None:
    for name, description in TIERS.items():
        config.addinivalue_line("markers", f"{name}: {description}")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Weight-loading progress bars from every fixture drown the measured values tests print.
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    runslow = config.getoption("--runslow")
    has_cuda = torch.cuda.is_available()
    for item in items:
        markers = {m.name for m in item.iter_markers()}
        if markers & SLOW_TIERS and not runslow:
            item.add_marker(pytest.mark.skip(reason="needs --runslow (real weights, minutes on CPU)"))
        if "cuda" in markers and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)"))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    tier = next((t for t in TIERS if t in report.keywords), "other")
    _tier_seconds[tier] = _tier_seconds.get(tier, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Time spent per tier (setup + call + teardown), so CI shows where its budget goes."""
    if _tier_seconds:
        parts = ", ".join(f"{tier} {seconds:.0f} s" for tier, seconds in sorted(_tier_seconds.items()))
        terminalreporter.write_line(f"time per tier: {parts}")


@pytest.fixture(scope="session")
def tiny_llama() -> Any:
    """The tiny random Llama (2 layers, GQA, byte-level vocab of 259): same architecture, no weights to fetch."""
    from harness.resolve import resolve_model

    return resolve_model("harness/tiny-random-llama")


@pytest.fixture(scope="session")
def smollm2() -> Any:
    """SmolLM2-135M as the user would get it: cache, download, or the bundled real weights."""
    from harness.resolve import resolve_model

    return resolve_model("HuggingFaceTB/SmolLM2-135M")


@pytest.fixture(scope="session")
def tinyllama() -> Any:
    """TinyLlama-1.1B: real weights when cached, else a random-init stand-in from its exact config."""
    from harness.resolve import resolve_model

    return resolve_model("TinyLlama/TinyLlama-1.1B-Chat-v1.0")


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_llama: Any) -> Any:
    from harness.loading import load_tokenizer

    return load_tokenizer(tiny_llama.path)


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2: Any) -> Any:
    from harness.loading import load_tokenizer

    return load_tokenizer(smollm2.path)

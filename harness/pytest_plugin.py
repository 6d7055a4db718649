"""An opt-in pytest plugin: the tier markers, ``--runslow`` and session fixtures that resolve each model once.

Nothing loads it by itself. A project asks for it with ``pytest -p harness.pytest_plugin`` or, in its
root ``conftest.py``, ``pytest_plugins = ["harness.pytest_plugin"]`` (this repository's conftest does).
It then gets: markers ``unit``, ``cpu``, ``cuda``, ``e2e``; ``cpu``/``e2e`` tests skipped unless
``--runslow``; ``cuda`` tests skipped without a GPU; and the fixtures ``tiny_llama``, ``smollm2``,
``tinyllama`` (each a ``ResolvedModel``) plus ``tiny_tokenizer`` and ``smollm2_tokenizer``.

A project whose conftest defines its own ``--runslow`` keeps it: the plugin then reads that option
instead of adding one, in whichever order the two load. Neither torch nor transformers is imported
while pytest configures; the fixtures import what they need.
"""

from __future__ import annotations

import argparse
import os
import sys
import types
from collections.abc import Generator
from typing import Any

import pytest

TIERS = {
    "unit": "fast tests, no model weights, no network (Phase 1)",
    "cpu": "real SmolLM2 weights on CPU; needs --runslow (Phase 2)",
    "cuda": "needs a CUDA GPU (Phase 3)",
    "e2e": "whole YAML configs end to end; needs --runslow (Phase 4)",
}
SLOW_TIERS = {"cpu", "e2e"}
RUNSLOW = "--runslow"
_tier_seconds: dict[str, float] = {}


def _defined(parser: pytest.Parser, name: str) -> bool:
    groups = [getattr(parser, "_anonymous", None), *getattr(parser, "_groups", [])]  # no public lookup
    return any(name in option.names() for group in groups if group is not None for option in group.options)


def _add_runslow(parser: pytest.Parser) -> None:
    if _defined(parser, RUNSLOW):
        return
    try:
        parser.addoption(
            RUNSLOW, action="store_true", default=False, help="run the cpu and e2e tiers (real weights, minutes)"
        )
    except (ValueError, argparse.ArgumentError):
        pass  # the project defines --runslow itself: the tiers follow its value


def pytest_addoption(parser: pytest.Parser, pluginmanager: pytest.PytestPluginManager) -> None:
    # Loaded from a conftest's pytest_plugins, the conftests that come first have added their options:
    # add --runslow now unless one of them did. Loaded earlier (-p, PYTEST_PLUGINS), a conftest may
    # still define its own --runslow, which would then clash: wait for them (pytest_load_initial_conftests).
    if any(_is_conftest(plugin) for plugin in pluginmanager.get_plugins()):
        _add_runslow(parser)


def _is_conftest(plugin: object) -> bool:
    return isinstance(plugin, types.ModuleType) and os.path.basename(getattr(plugin, "__file__", "") or "") == (
        "conftest.py"
    )


@pytest.hookimpl(wrapper=True)
def pytest_load_initial_conftests(parser: pytest.Parser) -> Generator[None, object, object]:
    """Called only for plugins loaded before the conftests: add --runslow once they have had their say."""
    try:
        return (yield)
    finally:
        _add_runslow(parser)


def pytest_configure(config: pytest.Config) -> None:
    for name, description in TIERS.items():
        config.addinivalue_line("markers", f"{name}: {description}")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _quiet_progress_bars()


def _quiet_progress_bars() -> None:
    """Weight-loading progress bars from every fixture drown the measured values tests print. Set
    through huggingface_hub's environment variable (read when transformers is imported) rather than by
    importing transformers here; libraries already imported are told directly."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] in ("0", "false", "False"):
        return
    hub_utils = sys.modules.get("huggingface_hub.utils")
    if hub_utils is not None:
        hub_utils.disable_progress_bars()
    hf_logging = sys.modules.get("transformers.utils.logging")
    if hf_logging is not None:
        hf_logging.disable_progress_bar()


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    runslow = config.getoption(RUNSLOW)
    has_cuda: bool | None = None
    for item in items:
        markers = {m.name for m in item.iter_markers()}
        if markers & SLOW_TIERS and not runslow:
            item.add_marker(pytest.mark.skip(reason="needs --runslow (real weights, minutes on CPU)"))
        if "cuda" in markers:
            if has_cuda is None:
                import torch

                has_cuda = torch.cuda.is_available()
            if not has_cuda:
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

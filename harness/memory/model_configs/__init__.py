"""``config.json`` files (configs only, no weights) of the models the predictor can answer for
without a download: Llama-2-7B, Llama-3-8B and SmolLM2-135M here, TinyLlama and the tiny test Llama
from ``harness.bundled``; any local snapshot or cached hub model through its own config.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harness.bundled import BUNDLES, STAND_INS, RandomInitBundle
from harness.errors import ConfigError

_HERE = Path(__file__).parent
ALIASES = {
    "meta-llama/Llama-2-7b-hf": "meta-llama--Llama-2-7b-hf",
    "meta-llama/Llama-2-7b-chat-hf": "meta-llama--Llama-2-7b-hf",
    "meta-llama/Meta-Llama-3-8B": "meta-llama--Meta-Llama-3-8B",
    "meta-llama/Meta-Llama-3-8B-Instruct": "meta-llama--Meta-Llama-3-8B",
    "meta-llama/Llama-3.1-8B": "meta-llama--Meta-Llama-3-8B",
    "HuggingFaceTB/SmolLM2-135M": "HuggingFaceTB--SmolLM2-135M",
    "HuggingFaceTB/SmolLM2-135M-Instruct": "HuggingFaceTB--SmolLM2-135M",
}


def model_config(base_model: str) -> dict[str, Any]:
    """The config.json of ``base_model``: a local directory, a shipped file, a bundled stand-in's, or
    the hub cache's; a one-line error when none is at hand (never a guess)."""
    local = Path(base_model) / "config.json"
    if local.is_file():
        return dict(json.loads(local.read_text()))
    if base_model in ALIASES:
        return dict(json.loads((_HERE / f"{ALIASES[base_model]}.json").read_text()))
    bundle = BUNDLES.get(STAND_INS.get(base_model, base_model))
    if isinstance(bundle, RandomInitBundle):
        return dict(bundle.config)
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(base_model, "config.json")
    if isinstance(cached, str):
        return dict(json.loads(Path(cached).read_text()))
    raise ConfigError(
        f"base_model: {base_model}: no config.json at hand (not a local directory, not cached, not one of "
        f"{', '.join(sorted(ALIASES))}); put the model's config.json in a directory and name that"
    )

"""Training speed under pytest-benchmark: a plain transformers + peft loop, the harness loss path on the
same padded batches, and the harness on packed rows, all in one run.

    pytest benchmarks/ --benchmark-json=out.json            # tiny random Llama, CPU, seconds
    BENCH_MODEL=TinyLlama/TinyLlama-1.1B-Chat-v1.0 BENCH_ADAPTER=qlora BENCH_BATCH=2 BENCH_MAX_LENGTH=512 \\
        pytest benchmarks/ --benchmark-json=out.json        # on CUDA (benchmarks/gpu_evidence.sh)

Each result's ``extra_info`` carries real and target tokens/s, peak GB (CUDA), MFU (None = unknown device)
and the target-tokens/s ratio to the plain loop. The two harness variants split the gain: unpacked/plain
is the loss path alone (same batches), packed/unpacked is packing alone.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest

from benchmarks.throughput import ALPACA, measure, plain_step
from harness.config import load_config
from harness.data.batching import epoch_batches
from harness.data.formatting import pad_token_id
from harness.recipe import prepare_run
from harness.training import training_step

MODEL = os.environ.get("BENCH_MODEL", "harness/tiny-random-llama")
ADAPTER = os.environ.get("BENCH_ADAPTER", "lora")
BATCH = int(os.environ.get("BENCH_BATCH", "4"))
MAX_LENGTH = int(os.environ.get("BENCH_MAX_LENGTH", "512"))
STEPS = int(os.environ.get("BENCH_STEPS", "4"))
WARMUP = int(os.environ.get("BENCH_WARMUP", "1"))
DATA = os.environ.get("BENCH_DATA", str(ALPACA) if ALPACA.is_file() else "builtin:tasks")


def _harness_step(model: Any, batch: Any, optimizer: Any) -> None:
    training_step(model, batch, optimizer, max_grad_norm=1.0)


VARIANTS: dict[str, tuple[bool, Callable[[Any, Any, Any], None]]] = {
    "plain": (False, plain_step),
    "harness_unpacked": (False, _harness_step),
    "harness_packed": (True, _harness_step),
}


def run_variant(name: str) -> dict[str, Any]:
    """Build the model fresh and time STEPS optimizer steps after WARMUP."""
    packing, step = VARIANTS[name]
    sets = [
        f"base_model={MODEL}",
        f"adapter={ADAPTER}",
        "lora.r=16",
        "lora.alpha=32",
        "lora.target_modules=[q_proj, k_proj, v_proj, o_proj]",
        f"dataset.path={DATA}",
        f"dataset.max_length={MAX_LENGTH}",
        "dataset.train_split=1.0",
        f"training.batch_size={BATCH}",
        f"training.packing={str(packing).lower()}",
    ]
    run = prepare_run(load_config(None, sets))
    run.build()
    batches = epoch_batches(
        run.data.train,
        batch_size=BATCH,
        max_length=MAX_LENGTH,
        pad_id=pad_token_id(run.tokenizer),
        seed=0,
        epoch=0,
        packing=packing,
    )
    return measure(name, run, batches[: STEPS + WARMUP], step, WARMUP)


@pytest.fixture(scope="session")
def results() -> dict[str, dict[str, Any]]:
    """Results of this session by variant, so every ratio is against a plain loop of the same run."""
    return {}


def _ratio(results: dict[str, dict[str, Any]], name: str, over: str) -> float:
    if over not in results:  # selected alone (-k): measure the reference outside the benchmark timer
        results[over] = run_variant(over)
    return results[name]["target_tokens_per_s"] / results[over]["target_tokens_per_s"]


@pytest.mark.parametrize("name", list(VARIANTS))
def test_training_speed(benchmark: Any, results: dict[str, dict[str, Any]], name: str) -> None:
    benchmark.extra_info.update(model=MODEL, adapter=ADAPTER, batch=BATCH, max_length=MAX_LENGTH, steps=STEPS)
    results[name] = benchmark.pedantic(run_variant, args=(name,), rounds=1, iterations=1)
    result = results[name]
    result["ratio_to_plain"] = _ratio(results, name, "plain")
    if name == "harness_unpacked":
        result["gain_from_loss_path"] = result["ratio_to_plain"]
    if name == "harness_packed":
        result["gain_from_packing"] = _ratio(results, name, "harness_unpacked")
    benchmark.extra_info.update(result)
    assert result["tokens_per_s"] > 0 and result["steps"] == STEPS

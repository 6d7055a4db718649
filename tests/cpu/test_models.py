"""Phase 2 basics on the real SmolLM2 weights: the converted snapshot is an ordinary HF checkpoint."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import torch


def test_plain_transformers_load_and_generation_knows_paris(smollm2):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(smollm2.path)
    tokenizer = AutoTokenizer.from_pretrained(smollm2.path)
    encoded = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**encoded, max_new_tokens=8, do_sample=False)
    text = tokenizer.decode(output[0][encoded["input_ids"].shape[1] :])
    print(f"generated: {text!r}")
    assert "Paris" in text


def test_snapshot_has_no_quantization_record(smollm2):
    config = (smollm2.path / "config.json").read_text()
    assert "quantization_config" not in config and '"dtype": "bfloat16"' in config
    assert (smollm2.path / "model.safetensors").stat().st_size > 250_000_000  # 135M params in bf16


def _fetch_seconds(env):
    done = subprocess.run(
        [sys.executable, "-m", "harness", "fetch", "HuggingFaceTB/SmolLM2-135M"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    match = re.search(r"source: (.+) \(([\d.]+) s\)", done.stdout)
    return match.group(1), float(match.group(2)), done.stderr


def test_second_fetch_takes_the_cache_path(tmp_path):
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1")
    env.pop("HF_HUB_CACHE", None)
    first_source, first, first_err = _fetch_seconds(env)
    second_source, second, _ = _fetch_seconds(env)
    print(f"first fetch {first:.2f} s ({first_source}), second {second:.3f} s ({second_source})")
    assert first_source == "bundled (materialized now)"
    assert "using the bundled offline copy of HuggingFaceTB/SmolLM2-135M-Instruct" in first_err
    assert second_source == "bundled (cached)"
    assert second < first / 10

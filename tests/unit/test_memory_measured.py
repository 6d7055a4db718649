"""The MEASURED side of harness.memory, without a GPU: the real steps ``harness probe`` runs beside
its prediction (the same code on CPU, only CUDA's peak reader injected), and the PREDICTED / MEASURED
lines and section 5 table that a CUDA run's validation report carries (CUDA faked)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from harness.config import config_from_dict
from harness.errors import ConfigError
from harness.memory.measure import Measurement, cuda_peak_gib, measure_steps
from harness.memory.model_configs import model_config
from harness.memory.probe import format_peaks, format_probe, probe
from harness.report import build_report, markdown
from harness.validation import ValidationOutcome
from harness.validation.collect import memory_evidence
from harness.validation.evidence import Evidence

TINY = "harness/tiny-random-llama"


def _tiny(adapter: str = "lora") -> Any:
    return config_from_dict(
        {
            "base_model": TINY,
            "adapter": adapter,
            "dataset": {"max_length": 32},
            "training": {"batch_size": 2, "learning_rate": 1e-2, "dtype": "float32"},
        }
    )


@pytest.mark.parametrize("adapter", ["lora", "qlora"])
def test_the_real_steps_load_through_the_harness_and_train(adapter: str) -> None:
    """Random weights written as a snapshot, loaded by the harness's loader (4-bit for QLoRA), adapted
    and trained two steps on CPU; the peak reader is the only CUDA part."""
    reads: list[torch.device] = []
    measured = measure_steps(
        model_config(TINY), _tiny(adapter), "cpu", peak_gib=lambda device: reads.append(device) or 1.5
    )
    print(f"\n{adapter}: losses {measured.losses}")
    assert measured.peak_gib == 1.5 and reads == [torch.device("cpu")]
    assert len(measured.losses) == 2 and all(math.isfinite(loss) for loss in measured.losses)
    # Random init over a vocabulary V starts near ln V; a step at lr 1e-2 on the same rows lowers it.
    assert abs(measured.losses[0] - math.log(model_config(TINY)["vocab_size"])) < 1.0
    assert measured.losses[1] < measured.losses[0]


def test_cpu_has_no_allocator_peak() -> None:
    assert cuda_peak_gib(torch.device("cpu")) is None


def test_the_real_steps_refuse_what_the_predictor_refuses() -> None:
    shape = model_config(TINY) | {"model_type": "mamba"}
    with pytest.raises(ConfigError, match="model_type 'mamba' is not supported"):
        measure_steps(shape, _tiny(), "cpu")


def test_probe_prints_measured_beside_predicted() -> None:
    result = probe(_tiny(), measure=lambda shape, config: Measurement(0.5, [6.0, 5.0], "cuda:0"))
    measured = result["measured"]
    assert measured["peak_gib"] == 0.5 and measured["losses"] == [6.0, 5.0]
    assert measured["predicted_over_measured"] == pytest.approx(result["predicted_peak_gib"] / 0.5, abs=1e-3)
    text = format_probe(result)
    print(text)
    assert "PREDICTED peak GPU memory" in text
    assert "MEASURED (2 real steps, random init, cuda:0) peak: 0.50 GiB; PREDICTED / MEASURED = " in text


def test_probe_without_a_gpu_measures_nothing() -> None:
    result = probe(_tiny())
    assert "measured" not in result and "MEASURED" not in format_probe(result)


@pytest.mark.parametrize(
    ("predicted", "measured", "line"),
    [
        (2.0, 1.6, "PREDICTED peak 2.00 GiB, MEASURED peak 1.60 GiB, PREDICTED / MEASURED = 1.25"),
        (2.0, None, "PREDICTED peak 2.00 GiB"),
        (None, 1.6, "MEASURED peak 1.60 GiB"),
        (None, None, "no prediction and no measurement"),
    ],
)
def test_every_number_is_labelled(predicted: float | None, measured: float | None, line: str) -> None:
    assert format_peaks(predicted, measured) == line


def test_a_cpu_run_reports_no_gpu_memory() -> None:
    assert memory_evidence(torch.device("cpu"), {"predicted_peak_gib": 1.0}) is None


def _cuda_memory(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    rows = [
        {"model": "TinyLlama/TinyLlama-1.1B-Chat-v1.0", "setup": "QLoRA 2x512", "document_gib": 3.0,
         "predicted_gib": 2.95, "under_document": True, "gradient_checkpointing": True},
        {"model": "HuggingFaceTB/SmolLM2-135M", "setup": "LoRA r=8", "document_gib": 0.4,
         "predicted_gib": 0.55, "under_document": False, "gradient_checkpointing": False},
    ]  # fmt: skip
    return memory_evidence(
        torch.device("cuda"),
        {"predicted_peak_gib": 3.1, "free_gib": 79.2},
        peak_gib=lambda device: 2.9,
        section5=lambda: rows,
    )


def test_a_cuda_run_collects_prediction_measurement_and_section_5(monkeypatch: pytest.MonkeyPatch) -> None:
    memory = _cuda_memory(monkeypatch)
    assert (memory.device, memory.predicted_peak_gib, memory.free_gib, memory.measured_peak_gib) == (
        "NVIDIA H100 80GB HBM3",
        3.1,
        79.2,
        2.9,
    )
    assert [r["setup"] for r in memory.section5] == ["QLoRA 2x512", "LoRA r=8"]


def test_the_report_of_a_cuda_run_has_the_memory_section(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    outcome = ValidationOutcome(_tiny(), tmp_path, Evidence(memory=_cuda_memory(monkeypatch)), [])
    report = build_report(outcome)
    text = markdown(report, outcome)
    print(text)
    assert report["memory"]["measured_peak_gib"] == 2.9 and len(report["memory"]["section5"]) == 2
    lines = text.splitlines()
    assert (
        "- this run on NVIDIA H100 80GB HBM3: PREDICTED peak 3.10 GiB, MEASURED peak 2.90 GiB, "
        "PREDICTED / MEASURED = 1.07 (79.20 GiB were free at the start)"
    ) in lines
    assert "| TinyLlama-1.1B-Chat-v1.0 | QLoRA 2x512 | 3 | 2.95 | - | yes |" in lines
    assert "| SmolLM2-135M | LoRA r=8 | 0.4 | 0.55 | - | NO |" in lines


def test_the_report_of_a_cpu_run_has_no_memory_section(tmp_path: Path) -> None:
    outcome = ValidationOutcome(_tiny(), tmp_path, Evidence(), [])
    report = build_report(outcome)
    assert "memory" not in report and "## GPU memory" not in markdown(report, outcome)

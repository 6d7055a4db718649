"""On a GPU: the recorded rows of tests/reference/gpu_memory.json measured again with the reference
program (random init) beside the CPU prediction, printed MEASURED / PREDICTED / ratio and held to the
calibration test's bounds. Written without a GPU at hand: it has not run yet."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from harness.bundled import TINYLLAMA_CONFIG
from harness.memory import reference_program
from harness.memory.predictor import predict

RECORDED = json.loads((Path(__file__).parents[1] / "reference" / "gpu_memory.json").read_text())
ROWS = [r for r in RECORDED["rows"] if r["batch_size"] * r["length"] <= 4096]
BOUNDS = {False: (0.70, 1.10), True: (0.45, 0.70)}


@pytest.mark.parametrize(
    "row", ROWS, ids=lambda r: f"{r['adapter']}-{r['batch_size']}x{r['length']}-gc{int(r['gradient_checkpointing'])}"
)
def test_measured_peak_beside_the_prediction(row: dict) -> None:
    config = reference_program.row_config(
        row["adapter"], row["batch_size"], row["length"], row["gradient_checkpointing"]
    )
    measured = reference_program.measure_on_gpu(TINYLLAMA_CONFIG, config)
    predicted = predict(TINYLLAMA_CONFIG, config, program=reference_program).peak_gib
    print(
        f"\n{torch.cuda.get_device_name()}: MEASURED {measured:.2f} GiB (recorded {row['measured_peak_gib']}), "
        f"PREDICTED {predicted:.2f} GiB, ratio {predicted / measured:.2f}"
    )
    low, high = BOUNDS[row["gradient_checkpointing"]]
    assert low <= predicted / measured <= high

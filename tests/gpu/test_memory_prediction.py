"""On a GPU: the recorded rows of tests/reference/gpu_memory.json measured again with the reference
program (random init) beside the CPU prediction, printed MEASURED / PREDICTED / ratio and held to the
calibration test's bounds; and the research document's section 5 TinyLlama QLoRA rows measured with
the harness's own loader and steps (harness.memory.measure), written into the reference file's
``harness_rows`` (one row per setup, device and library versions; a rerun replaces its own row).
Written without a GPU at hand: it has not run yet."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from harness.bundled import TINYLLAMA_CONFIG
from harness.memory import reference_program, tables
from harness.memory.measure import measure_steps
from harness.memory.model_configs import model_config
from harness.memory.predictor import predict
from harness.memory.probe import versions

REFERENCE = Path(__file__).parents[1] / "reference" / "gpu_memory.json"
RECORDED = json.loads(REFERENCE.read_text())
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


SECTION_5_QLORA = [r for r in tables.ROWS if r.model == tables.TINYLLAMA and r.adapter == "qlora"]


def record_harness_row(row: dict) -> None:
    """Upsert ``row`` into the reference file's harness_rows, keyed by setup, device and versions."""
    recorded = json.loads(REFERENCE.read_text())
    key = ("setup", "device", "versions")
    kept = [r for r in recorded.get("harness_rows", []) if any(r.get(k) != row[k] for k in key)]
    recorded["harness_rows"] = [*kept, row]
    REFERENCE.write_text(json.dumps(recorded, indent=2) + "\n")


@pytest.mark.parametrize("row", SECTION_5_QLORA, ids=lambda r: r.setup.replace(" ", "-"))
def test_harness_steps_measured_beside_the_prediction(row: tables.DocumentRow) -> None:
    config = tables.row_config(row)
    shape = model_config(row.model)
    measured = measure_steps(shape, config, "cuda")
    predicted = predict(shape, config).peak_gib
    checkpointing = config.gradient_checkpointing("cuda")
    print(
        f"\n{torch.cuda.get_device_name()} {row.setup}: MEASURED {measured.peak_gib:.2f} GiB, PREDICTED "
        f"{predicted:.2f} GiB, ratio {predicted / measured.peak_gib:.2f}, document {row.document_gib} GiB, "
        f"losses {measured.losses}"
    )
    record_harness_row(
        {
            "setup": row.setup,
            "program": "harness.memory.measure.measure_steps (harness loader, adapter and training_step)",
            "device": torch.cuda.get_device_name(),
            "versions": versions(),
            "batch_size": row.batch_size,
            "length": row.length,
            "gradient_checkpointing": checkpointing,
            "measured_peak_gib": round(measured.peak_gib, 3),
            "predicted_peak_gib": round(predicted, 3),
        }
    )
    # The reference program's bounds; the harness program's own are to be set from these rows.
    low, high = BOUNDS[checkpointing]
    assert low <= predicted / measured.peak_gib <= high

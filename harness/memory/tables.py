"""The research document's section 5 VRAM tables, every row, predicted with the project's defaults.

Each row is a run config built from the embedded defaults (bf16 on CUDA, gradient checkpointing by
the config's CUDA rule, the harness's chunked loss) plus what the row names. The document does not
say the batch or sequence length of its non-batch rows; they are predicted at 1 x 256.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from harness.config import RunConfig, config_from_dict

SMOLLM2 = "HuggingFaceTB/SmolLM2-135M"
TINYLLAMA = "TinyLlama/TinyLlama-1.1B-Chat-v1.0"


@dataclass(frozen=True)
class DocumentRow:
    model: str
    setup: str
    document_gib: float  # the document's figure (its "GB" read as GiB, the lenient reading)
    adapter: str  # lora, qlora, none, or inference
    dtype: str = "bfloat16"
    r: int = 8
    batch_size: int = 1
    length: int = 256


ROWS: tuple[DocumentRow, ...] = (
    DocumentRow(SMOLLM2, "FP32 inference", 0.6, "inference", dtype="float32"),
    DocumentRow(SMOLLM2, "FP16 inference", 0.3, "inference", dtype="float16"),
    DocumentRow(SMOLLM2, "BF16 training (full)", 1.0, "none"),
    DocumentRow(SMOLLM2, "LoRA r=8", 0.4, "lora"),
    DocumentRow(SMOLLM2, "QLoRA 4-bit r=8", 0.2, "qlora"),
    DocumentRow(TINYLLAMA, "FP16 inference", 2.5, "inference", dtype="float16"),
    DocumentRow(TINYLLAMA, "BF16 training (full)", 8.0, "none"),
    DocumentRow(TINYLLAMA, "LoRA r=8", 4.0, "lora"),
    DocumentRow(TINYLLAMA, "QLoRA 4-bit r=8", 1.5, "qlora"),
    DocumentRow(TINYLLAMA, "QLoRA 4-bit r=16", 2.0, "qlora", r=16),
    DocumentRow(TINYLLAMA, "QLoRA 1x256", 1.5, "qlora", r=16, batch_size=1, length=256),
    DocumentRow(TINYLLAMA, "QLoRA 2x256", 2.0, "qlora", r=16, batch_size=2, length=256),
    DocumentRow(TINYLLAMA, "QLoRA 4x256", 3.0, "qlora", r=16, batch_size=4, length=256),
    DocumentRow(TINYLLAMA, "QLoRA 1x512", 2.0, "qlora", r=16, batch_size=1, length=512),
    DocumentRow(TINYLLAMA, "QLoRA 2x512", 3.0, "qlora", r=16, batch_size=2, length=512),
)


def row_config(row: DocumentRow) -> RunConfig:
    """The project's default run for this row (what ``harness train`` would do on a CUDA device)."""
    return config_from_dict(
        {
            "base_model": row.model,
            "adapter": "none" if row.adapter == "inference" else row.adapter,
            "lora": {"r": row.r, "alpha": 2 * row.r},
            "dataset": {"max_length": row.length},
            "training": {"batch_size": row.batch_size, "dtype": row.dtype},
        },
        source=f"section 5: {row.model} {row.setup}",
    )


def predict_rows(rows: tuple[DocumentRow, ...] = ROWS) -> list[dict[str, Any]]:
    """Every row with its PREDICTED peak (GiB) and whether it comes in under the document's figure."""
    from harness.memory.model_configs import model_config
    from harness.memory.predictor import predict, predict_inference

    results = []
    for row in rows:
        config = row_config(row)
        if row.adapter == "inference":
            prediction = predict_inference(model_config(row.model), config)
        else:
            prediction = predict(model_config(row.model), config)
        results.append(
            {
                "model": row.model,
                "setup": row.setup,
                "document_gib": row.document_gib,
                "predicted_gib": round(prediction.peak_gib, 3),
                "under_document": prediction.peak_gib <= row.document_gib,
                "gradient_checkpointing": config.gradient_checkpointing("cuda") and row.adapter != "inference",
            }
        )
    return results


def format_table(results: list[dict[str, Any]]) -> str:
    """Markdown: document figure, PREDICTED, MEASURED where a GPU ran."""
    lines = [
        "| model | setup | document | PREDICTED GiB | MEASURED GiB | under the document |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        measured = f"{r['measured_gib']:.2f}" if r.get("measured_gib") is not None else "-"
        lines.append(
            f"| {r['model'].split('/')[-1]} | {r['setup']} | {r['document_gib']:g} | {r['predicted_gib']:.2f} | "
            f"{measured} | {'yes' if r['under_document'] else 'NO'} |"
        )
    return "\n".join(lines)

"""Write a validation outcome as report.json (versioned schema), report.md and PNG plots."""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

from harness import __version__
from harness.memory.probe import format_peaks
from harness.memory.tables import format_table
from harness.validation import FAIL, PASS, SKIPPED, ValidationOutcome
from harness.validation.evidence import MemoryEvidence

SCHEMA_VERSION = 2  # 2: criteria judged on collected evidence (held-out loss, post-clip norms, reference lrs)
PACKAGES = ("torch", "transformers", "peft", "bitsandbytes", "datasets", "safetensors", "huggingface_hub", "trl")


def environment(device: str, dtype: str) -> dict[str, Any]:
    import torch

    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
        "device": device,
        "gpu": gpu,
        "dtype": dtype,
        "cpu_threads": torch.get_num_threads(),
    }


def build_report(outcome: ValidationOutcome) -> dict[str, Any]:
    run: Any = outcome.run
    evidence = outcome.evidence
    counts = {status: sum(c.status == status for c in outcome.criteria) for status in (PASS, FAIL, SKIPPED)}
    model: dict[str, Any] = {"requested": outcome.config.base_model}
    if run is not None:
        model |= {
            "served_as": run.resolved.served_as,
            "path": str(run.resolved.path),
            "source": run.resolved.source,
            "random_init": run.resolved.random_init,
            "info": run.info.to_dict(),
        }
    training = None
    if evidence.training is not None:
        training = {
            "steps": len(evidence.training.steps),
            "epochs_completed": evidence.training.epochs_completed,
            "evals": evidence.facts.get("evals", []),
        }
    measured = {
        when: {"held_out_loss": state.held_out.mean, "reference_perplexity": state.reference_perplexity}
        for when, state in (("before", evidence.before), ("after", evidence.after))
        if state is not None
    }
    return {
        "schema_version": SCHEMA_VERSION,
        "harness_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config_source": outcome.config.source,
        "ignored_config_keys": outcome.config.ignored_keys,
        "config": outcome.config.to_dict(),
        "environment": environment(
            str(run.device) if run else "unknown", str(run.dtype).replace("torch.", "") if run else "unknown"
        ),
        "model": model,
        "facts": evidence.facts,
        "measured": measured,
        "errors": evidence.errors,
        "training": training,
        **({"oracle": asdict(evidence.oracle)} if evidence.oracle is not None else {}),  # validation.oracle
        **({"engines": asdict(evidence.engines)} if evidence.engines is not None else {}),  # compare_engines
        **({"memory": asdict(evidence.memory)} if evidence.memory is not None else {}),  # CUDA runs
        "criteria": [asdict(c) for c in outcome.criteria],
        "summary": counts | {"exit_code": outcome.exit_code, "result": "PASS" if outcome.exit_code == 0 else "FAIL"},
    }


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def criteria_table(outcome: ValidationOutcome) -> str:
    rows = ["| # | criterion | status | measured | threshold |", "|---|---|---|---|---|"]
    for index, c in enumerate(outcome.criteria, 1):
        measured = c.measured or c.detail
        rows.append(f"| {index} | {_cell(c.name)} | **{c.status}** | {_cell(measured)} | {_cell(c.threshold)} |")
    return "\n".join(rows)


def markdown(report: dict[str, Any], outcome: ValidationOutcome) -> str:
    env, model, facts = report["environment"], report["model"], report["facts"]
    packages = ", ".join(f"{k} {v}" for k, v in env["packages"].items() if v)
    random_init = " — **random init** (no real weights)" if model.get("random_init") else ""
    served = model.get("served_as", model["requested"])
    stand_in = f" (served by {served})" if served != model["requested"] else ""
    data = facts.get("data", {})
    adapter = facts.get("adapter", {}).get("describe", outcome.config.adapter)
    summary = report["summary"]
    lines = [
        f"# Validation report: {summary['result']}",
        "",
        f"{summary[PASS]} passed, {summary[FAIL]} failed, {summary[SKIPPED]} skipped"
        f" — config `{report['config_source']}`",
        "",
        "## Environment",
        f"- packages: {packages}",
        f"- python {env['python']} on {env['platform']}",
        f"- device: {env['device']}{' (' + env['gpu'] + ')' if env.get('gpu') else ''}, dtype {env['dtype']}, "
        f"{env['cpu_threads']} CPU threads",
        "",
        "## Model and data",
        f"- model: `{model['requested']}`{stand_in}{random_init}",
        f"- snapshot: `{model.get('path', '?')}` ({model.get('source', '?')})",
        f"- adapter: {adapter}, trained by "
        + ("TRL's SFTTrainer" if outcome.evidence.engine == "trl" else "the harness loop")
        + " (training.engine)",
        f"- data: {data.get('source', '?')} — {data.get('rows_read', '?')} rows read, "
        f"{data.get('train_examples', '?')} train / {data.get('validation_examples', '?')} validation examples, "
        f"{data.get('tokens', '?')} tokens ({data.get('target_tokens', '?')} targets), "
        f"{data.get('truncated', 0)} truncated, dropped {data.get('dropped', {}) or 'none'}",
    ]
    if "throughput" in facts:
        t = facts["throughput"]
        lines.append(
            f"- training: {facts['plan']['total_steps']} steps in {facts['training_seconds']:.0f} s, "
            f"{t['tokens_per_s']:.0f} tokens/s"
        )
    if "reference_losses" in facts:
        lines.append(f"- reference losses: {facts['reference_losses']}")
    if "step_cap" in facts:
        lines.append(f"- step cap: {facts['step_cap']}")
    lines += ["", "## Criteria", "", criteria_table(outcome), ""]
    if outcome.evidence.memory is not None:
        lines += memory_section(outcome.evidence.memory)
    after = outcome.evidence.after
    if after is not None and after.answers:
        lines += ["## Generations after training (first held-out examples)", ""]
        for answer in after.answers[:5]:
            lines.append(
                f"- `{_cell(answer.prompt)[:80]}` → `{_cell(answer.generated.strip())[:80]}`"
                f" (expected `{_cell(answer.expected)[:80]}`)"
            )
        lines.append("")
    lines += ["## Plots", "", "![loss](loss.png) ![learning rate](lr.png) ![gradient norm](grad_norm.png)", ""]
    return "\n".join(lines)


def memory_section(memory: MemoryEvidence) -> list[str]:
    """This run's peak GPU memory, PREDICTED and MEASURED, and the research document's section 5 rows."""
    return [
        "## GPU memory",
        "",
        f"- this run on {memory.device}: {format_peaks(memory.predicted_peak_gib, memory.measured_peak_gib)}"
        + (f" ({memory.free_gib:.2f} GiB were free at the start)" if memory.free_gib is not None else ""),
        "",
        "The research document's section 5 VRAM tables, as this project's defaults are predicted to need them"
        " (fake execution on CPU; MEASURED only where a GPU ran that row):",
        "",
        format_table(memory.section5),
        "",
    ]


def plot(outcome: ValidationOutcome, out_dir: Path) -> list[Path]:
    """loss.png (train + eval), lr.png and grad_norm.png over optimizer steps."""
    training = outcome.evidence.training
    if training is None or not training.steps:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = training.steps
    steps = [r.step for r in history]
    evals = outcome.evidence.facts.get("evals", [])
    written = []
    series = [
        ("loss.png", "loss (per target token)", [r.loss for r in history]),
        ("lr.png", "learning rate", [r.lr for r in history]),
        ("grad_norm.png", "gradient norm (pre-clip)", [r.grad_norm for r in history]),
    ]
    for name, label, values in series:
        figure, axis = plt.subplots(figsize=(6.4, 3.6), dpi=100)
        axis.plot(steps, values, label="train", linewidth=1.2)
        if name == "loss.png":
            if evals:
                axis.plot([e["step"] for e in evals], [e["eval_loss"] for e in evals], "o-", label="eval")
            before, after = outcome.evidence.before, outcome.evidence.after
            if before is not None and after is not None:
                axis.plot(
                    [0, steps[-1]], [before.held_out.mean, after.held_out.mean], "s", label="held-out (before, after)"
                )
            axis.legend()
        axis.set_xlabel("optimizer step")
        axis.set_ylabel(label)
        axis.set_title(f"{label} — {outcome.config.base_model}")
        axis.grid(alpha=0.3)
        figure.tight_layout()
        figure.savefig(out_dir / name)
        plt.close(figure)
        written.append(out_dir / name)
    return written


def write_report(outcome: ValidationOutcome) -> dict[str, Any]:
    out_dir = outcome.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    report = build_report(outcome)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    plot(outcome, out_dir)
    (out_dir / "report.md").write_text(markdown(report, outcome))
    return report


def console_table(outcome: ValidationOutcome) -> str:
    """A plain-text table for the terminal."""
    width = max(len(c.name) for c in outcome.criteria)
    lines = []
    for c in outcome.criteria:
        value = c.measured or c.detail
        threshold = f"  [{c.threshold}]" if c.threshold else ""
        lines.append(f"{c.status:<7} {c.name:<{width}}  {value}{threshold}")
    return "\n".join(lines)

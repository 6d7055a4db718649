"""Recorded reference losses (torchtune's practice): fixed small runs whose per-step training losses are
stored with the library versions that produced them, so a later run on the same configs shows whether
an upgrade (or a change to the harness) moved the numbers, and by how much.

``harness reference record [--out DIR]`` trains every config in ``REFERENCES`` twice on the CPU,
measures how far the two runs differ, and writes ``DIR/<name>.json``: the resolved config, the
versions of torch, transformers, peft and bitsandbytes, the losses, the repeat difference and the
tolerance a re-run is held to. ``compare`` measures a new run against a recording.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from harness.config import BUILTIN_TASKS, RunConfig, config_from_dict
from harness.errors import HarnessError, TrainingError

DEFAULT_DIR = Path("tests/reference")
STACK = ("torch", "transformers", "peft", "bitsandbytes")
# Relative, per step. A repeat on one machine is bitwise equal (measured: 0). Another CPU's kernels
# are not: forcing MKL and ATen from AVX-512 to AVX2 (MKL_ENABLE_INSTRUCTIONS=AVX2
# ATEN_CPU_CAPABILITY=avx2, one thread) moved the tiny run by up to 7.0e-8, SmolLM2 LoRA by 1.5e-5 and
# SmolLM2 QLoRA by 2.3e-5 (its 30 layers and vocab of 49152 sum far more terms). The tolerances sit
# above those, well below what a changed loss, schedule or clipping does (1e-3 and more).
TOLERANCE = {"tiny_lora": 1e-5, "smollm2_lora": 1e-4, "smollm2_qlora": 1e-4}


def _config(base_model: str, adapter: str, num_examples: int, batch_size: int, max_length: int) -> dict[str, Any]:
    """A small CPU float32 run on the built-in task set: warmup + cosine, accumulation 2, clipping."""
    return {
        "base_model": base_model,
        "adapter": adapter,
        "seed": 1234,
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
        "dataset": {
            "path": BUILTIN_TASKS,
            "type": "alpaca",
            "max_length": max_length,
            "train_split": 0.9,
            "num_examples": num_examples,
            "task_families": ["sort_numbers", "reverse_words"],
        },
        "training": {
            "epochs": 2,
            "batch_size": batch_size,
            "gradient_accumulation_steps": 2,
            "learning_rate": 1e-3,
            "weight_decay": 0.01,
            "lr_scheduler": "cosine",
            "warmup_ratio": 0.1,
            "max_grad_norm": 1.0,
            "save_steps": 10_000,
            "dtype": "float32",
            "device": "cpu",
        },
    }


REFERENCES: dict[str, dict[str, Any]] = {
    # 72 train examples, 18 micro batches of 4: 9 steps an epoch, 18 in all
    "tiny_lora": _config("harness/tiny-random-llama", "lora", 80, 4, 320),
    # 32 train examples, 16 micro batches of 2: 8 steps an epoch, 16 in all
    "smollm2_lora": _config("HuggingFaceTB/SmolLM2-135M", "lora", 36, 2, 128),
    "smollm2_qlora": _config("HuggingFaceTB/SmolLM2-135M", "qlora", 36, 2, 128),
}


def stack_versions() -> dict[str, str]:
    """The installed versions of the libraries whose numerics a recording pins."""
    versions = {}
    for name in STACK:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def training_losses(config: RunConfig) -> list[float]:
    """Train ``config`` (checkpoints go to a scratch folder) and return every step's loss."""
    from harness.recipe import prepare_run

    with tempfile.TemporaryDirectory() as scratch:
        run = prepare_run(dataclasses.replace(config, output_dir=scratch))
        run.build()
        return [record.loss for record in run.trainer().train().history]


def relative_differences(ours: list[float], recorded: list[float]) -> list[float]:
    return [abs(a - b) / max(abs(b), 1e-12) for a, b in zip(ours, recorded)]


@dataclass
class Drift:
    """A run against a recording: how far it drifted, and whether that is within the tolerance."""

    name: str
    steps: int
    recorded_steps: int
    max_relative: float
    worst_step: int  # 1-based
    tolerance: float
    changed_versions: list[str]  # "torch 2.13.0 -> 2.14.0", for each library that differs from the recording's

    @property
    def matches(self) -> bool:
        return self.steps == self.recorded_steps > 0 and self.max_relative <= self.tolerance

    def describe(self) -> str:
        stack = f"another stack ({', '.join(self.changed_versions)})" if self.changed_versions else "the recorded stack"
        return (
            f"{self.name}: {'matches' if self.matches else 'DRIFTED from'} the recording on {stack}: "
            f"{self.steps}/{self.recorded_steps} steps, max relative loss difference {self.max_relative:.1e} "
            f"(step {self.worst_step}), tolerance {self.tolerance:g}"
        )


def compare(recording: dict[str, Any], losses: list[float]) -> Drift:
    recorded, was = recording["losses"], recording["versions"]
    differences = relative_differences(losses, recorded)
    worst = max(range(len(differences)), key=differences.__getitem__, default=0)
    return Drift(
        name=recording["name"],
        steps=len(losses),
        recorded_steps=len(recorded),
        max_relative=differences[worst] if differences else float("nan"),
        worst_step=worst + 1,
        tolerance=float(recording["tolerance"]["relative"]),
        changed_versions=[f"{k} {was.get(k)} -> {v}" for k, v in stack_versions().items() if was.get(k) != v],
    )


def verdict(recording: dict[str, Any], losses: list[float]) -> str:
    """One line for the report: "match within X", or "DRIFTED at step N by D" (the first step beyond
    the tolerance, and the largest difference), naming the libraries that changed since recording."""
    drift = compare(recording, losses)
    changed = f"; changed since recording: {', '.join(drift.changed_versions)}" if drift.changed_versions else ""
    where = f"(recording {drift.name}, tolerance {drift.tolerance:g}{changed})"
    if drift.matches:
        return f"match within {drift.max_relative:.1e} {where}"
    if drift.steps != drift.recorded_steps:
        return f"DRIFTED: {drift.steps} steps, the recording has {drift.recorded_steps} {where}"
    differences = relative_differences(losses, recording["losses"])
    first = next(step for step, d in enumerate(differences, 1) if not d <= drift.tolerance)
    return f"DRIFTED at step {first} by {differences[first - 1]:.1e} (max {drift.max_relative:.1e}) {where}"


def reference_verdict(config: RunConfig, losses: list[float], directory: str | Path = DEFAULT_DIR) -> str:
    """Whether ``config`` (output_dir aside) has a recording in ``directory``, and the verdict on
    ``losses`` against it; this is how a user learns that an upgrade moved the numerics."""
    wanted = {k: v for k, v in config.to_dict().items() if k != "output_dir"}
    for path in sorted(Path(directory).glob("*.json")):
        try:
            recording, recorded = load_recording(path)
        except (OSError, ValueError, KeyError, TypeError, HarnessError):
            continue  # not a recording (or another schema): it cannot be this config's
        if {k: v for k, v in recorded.to_dict().items() if k != "output_dir"} == wanted:
            return verdict(recording, losses)
    return "no reference for this config"


def load_recording(path: str | Path) -> tuple[dict[str, Any], RunConfig]:
    """A recording and the config it was made with."""
    recording = json.loads(Path(path).read_text())
    return recording, config_from_dict(recording["config"], source=str(path))


def record(name: str, out_dir: str | Path = DEFAULT_DIR) -> Path:
    """Train reference ``name`` twice, and write its losses, versions and tolerance to ``out_dir``."""
    config = config_from_dict(REFERENCES[name], source=f"harness.reference:{name}")
    began = time.perf_counter()
    first = training_losses(config)
    seconds = time.perf_counter() - began
    second = training_losses(config)
    repeat = max(relative_differences(second, first), default=0.0)
    if len(first) != len(second) or repeat > TOLERANCE[name]:
        raise TrainingError(f"{name}: two runs differ by {repeat:.1e} relative: not reproducible enough to record")
    import torch

    recording = {
        "name": name,
        "recorded": time.strftime("%Y-%m-%d"),
        "versions": stack_versions(),
        "platform": {
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "torch_threads": torch.get_num_threads(),
        },
        "tolerance": {"relative": TOLERANCE[name]},
        "repeat_max_relative": repeat,
        "seconds": round(seconds, 1),
        "losses": first,
        "config": {k: v for k, v in config.to_dict().items() if k != "output_dir"},
    }
    path = Path(out_dir) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(recording, indent=2) + "\n")
    return path

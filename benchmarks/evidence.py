"""Summarise one run of benchmarks/gpu_evidence.sh into evidence.json and evidence.md.

The script writes, into its folder: ``stages.tsv`` (stage, exit code, seconds per line), one ``<stage>.log``
per stage, ``nvidia-smi.txt`` and ``benchmarks.json`` (pytest-benchmark). This module reads them, adds the
device and library versions, and writes the two reports; it never decides a stage's outcome itself, the
exit code does (124/137 is the stage's ``timeout``).

    python -m benchmarks.evidence gpu-evidence/2026-12-03T0915Z
"""

from __future__ import annotations

import json
import re
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

LIBRARIES = ("torch", "transformers", "peft", "bitsandbytes", "trl", "datasets", "gguf")
TIMEOUT_CODES = (124, 137)
_PYTEST_TALLY = re.compile(r"^=+ (.+ in [\d.]+s.*?) =+$")


def stage_status(code: int) -> str:
    return "passed" if code == 0 else "timed out" if code in TIMEOUT_CODES else f"failed (exit {code})"


def read_stages(folder: Path) -> list[dict[str, Any]]:
    """One record per line of stages.tsv, with the last meaningful line of the stage's log."""
    stages = []
    for line in (folder / "stages.tsv").read_text().splitlines():
        name, code, seconds = line.split("\t")
        log = folder / f"{name}.log"
        stages.append(
            {
                "stage": name,
                "exit_code": int(code),
                "status": stage_status(int(code)),
                "seconds": float(seconds),
                "summary": log_summary(log.read_text(errors="replace")) if log.is_file() else "",
            }
        )
    return stages


def log_summary(text: str) -> str:
    """pytest's final tally when the log has one, else its last non-empty line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    tallies = [m.group(1) for m in map(_PYTEST_TALLY.match, lines) if m]
    return tallies[-1] if tallies else (lines[-1] if lines else "")


def benchmark_rows(path: Path) -> list[dict[str, Any]]:
    """The extra_info of each pytest-benchmark result (benchmarks/test_training_speed.py fills it)."""
    if not path.is_file():
        return []
    return [bench["extra_info"] | {"test": bench["name"]} for bench in json.loads(path.read_text())["benchmarks"]]


def versions() -> dict[str, str]:
    found = {}
    for name in LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def cuda_device() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"


def summarise(folder: Path, device: str, library_versions: dict[str, str]) -> dict[str, Any]:
    """Collect the folder into one dict and write evidence.json and evidence.md beside the logs."""
    smi = folder / "nvidia-smi.txt"
    summary = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "device": device,
        "nvidia_smi": smi.read_text().strip() if smi.is_file() else "",
        "versions": library_versions,
        "stages": read_stages(folder),
        "benchmarks": benchmark_rows(folder / "benchmarks.json"),
    }
    summary["passed"] = all(s["exit_code"] == 0 for s in summary["stages"])
    (folder / "evidence.json").write_text(json.dumps(summary, indent=2) + "\n")
    (folder / "evidence.md").write_text(markdown(summary))
    return summary


def _number(value: Any, spec: str) -> str:
    return "unknown" if value is None else format(value, spec)


def _gain(row: dict[str, Any], key: str) -> str:
    """Each gain belongs to one variant (loss path: harness unpacked; packing: harness packed)."""
    return f"{row[key]:.2f}" if key in row else "-"


def markdown(summary: dict[str, Any]) -> str:
    lines = [
        f"# GPU evidence, {summary['date']}",
        "",
        f"Device: {summary['device']} ({summary['nvidia_smi'] or 'no nvidia-smi output'})",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in summary["versions"].items()),
        "",
        f"Overall: {'PASSED' if summary['passed'] else 'FAILED'}",
        "",
        "| stage | status | seconds | summary |",
        "|---|---|---|---|",
    ]
    lines += [f"| {s['stage']} | {s['status']} | {s['seconds']:.0f} | {s['summary']} |" for s in summary["stages"]]
    if summary["benchmarks"]:
        lines += [
            "",
            "| benchmark | tok/s | target tok/s | peak GB | MFU | x plain | gain: loss path | gain: packing |",
            "|---|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {b['test']} | {b['tokens_per_s']:.0f} | {b['target_tokens_per_s']:.0f} | "
            f"{_number(b.get('peak_gb'), '.2f')} | {_number(b.get('mfu'), '.1%')} | {b['ratio_to_plain']:.2f} | "
            f"{_gain(b, 'gain_from_loss_path')} | {_gain(b, 'gain_from_packing')} |"
            for b in summary["benchmarks"]
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not (Path(argv[0]) / "stages.tsv").is_file():
        print("usage: python -m benchmarks.evidence FOLDER (a folder written by benchmarks/gpu_evidence.sh)")
        return 2
    summary = summarise(Path(argv[0]), cuda_device(), versions())
    print((Path(argv[0]) / "evidence.md").read_text(), end="")
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

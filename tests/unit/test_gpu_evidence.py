"""benchmarks/gpu_evidence.sh and benchmarks/evidence.py on CPU: the script's syntax, its one-line refusal
without CUDA, its stage bookkeeping (with fake nvidia-smi / python), and the summary from fabricated logs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from benchmarks.evidence import log_summary, summarise

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_evidence.sh"


def _copy_script(tmp_path: Path) -> Path:
    (tmp_path / "benchmarks").mkdir()
    return Path(shutil.copy(SCRIPT, tmp_path / "benchmarks" / "gpu_evidence.sh"))


def _fake(bin_dir: Path, name: str, body: str) -> Path:
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / name
    path.write_text(f"#!/usr/bin/env bash\n{body}\n")
    path.chmod(0o755)
    return path


def _run(script: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    bash = shutil.which("bash")
    assert bash is not None
    return subprocess.run([bash, str(script)], capture_output=True, text=True, env=os.environ | env, timeout=60)


def test_script_parses() -> None:
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0


def test_broken_script_does_not_parse(tmp_path: Path) -> None:
    broken = tmp_path / "broken.sh"
    broken.write_text(SCRIPT.read_text().replace("fi\n", "\n", 1))
    assert subprocess.run(["bash", "-n", str(broken)], capture_output=True).returncode != 0


def test_refuses_in_one_line_without_nvidia_smi(tmp_path: Path) -> None:
    script = _copy_script(tmp_path)
    bin_dir = tmp_path / "bin"  # only dirname on PATH, so no nvidia-smi even on a GPU machine
    bin_dir.mkdir()
    dirname = shutil.which("dirname")
    assert dirname is not None
    (bin_dir / "dirname").symlink_to(dirname)
    done = _run(script, {"PATH": str(bin_dir)})
    print(done.stderr)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "refused: no CUDA device" in done.stderr
    assert not (tmp_path / "gpu-evidence").exists()


def test_refuses_when_torch_sees_no_cuda(tmp_path: Path) -> None:
    script = _copy_script(tmp_path)
    bin_dir = tmp_path / "bin"
    _fake(bin_dir, "nvidia-smi", "echo 'NVIDIA H100 80GB HBM3, 81559 MiB, 580.0'")
    done = _run(script, {"PATH": f"{bin_dir}:/usr/bin:/bin", "PYTHON": str(_fake(bin_dir, "py", "exit 1"))})
    assert done.returncode == 2 and "refused: no CUDA device" in done.stderr


def test_with_cuda_every_stage_runs_under_its_own_timeout(tmp_path: Path) -> None:
    """Fake CUDA (nvidia-smi and a python that succeeds); the cuda tier hangs past T_CUDA=1 s."""
    script = _copy_script(tmp_path)
    bin_dir = tmp_path / "bin"
    _fake(bin_dir, "nvidia-smi", "echo 'NVIDIA H100 80GB HBM3, 81559 MiB, 580.0'")
    python = _fake(bin_dir, "py", '[[ "$*" == *"-m cuda"* ]] && sleep 30; echo "fake: $*"; exit 0')
    done = _run(script, {"PATH": f"{bin_dir}:/usr/bin:/bin", "PYTHON": str(python), "T_CUDA": "1"})
    print(done.stdout, done.stderr)
    assert done.returncode == 0, done.stderr
    (folder,) = (tmp_path / "gpu-evidence").iterdir()
    stages = [line.split("\t") for line in (folder / "stages.tsv").read_text().splitlines()]
    assert [(name, code) for name, code, _ in stages] == [("cuda-tier", "124"), ("benchmarks", "0"), ("validate", "0")]
    assert float(stages[0][2]) < 15
    assert "--max-steps 30" in (folder / "validate.log").read_text()
    assert "H100" in (folder / "nvidia-smi.txt").read_text()


def _fabricated(folder: Path, codes: dict[str, int]) -> Path:
    folder.mkdir()
    (folder / "stages.tsv").write_text("".join(f"{n}\t{c}\t{i * 10 + 1.5}\n" for i, (n, c) in enumerate(codes.items())))
    (folder / "cuda-tier.log").write_text(
        "....s\n======= 7 passed, 2 skipped, 3 warnings in 84.21s (0:01:24) =======\n"
    )
    (folder / "validate.log").write_text("step 30 loss 1.93\nverdict: PASS (12/12 criteria)\n\n")
    (folder / "nvidia-smi.txt").write_text("NVIDIA H100 80GB HBM3, 81559 MiB, 580.65\n")
    rows = [
        {
            "name": "test_training_speed[plain]",
            "extra_info": {
                "tokens_per_s": 1109.4,
                "target_tokens_per_s": 532.0,
                "peak_gb": 2.21,
                "mfu": 0.0093,
                "ratio_to_plain": 1.0,
            },
        },
        {
            "name": "test_training_speed[harness_packed]",
            "extra_info": {
                "tokens_per_s": 5012.0,
                "target_tokens_per_s": 2650.5,
                "peak_gb": None,
                "mfu": None,
                "ratio_to_plain": 4.982,
                "gain_from_packing": 3.5,
            },
        },
    ]
    (folder / "benchmarks.json").write_text(json.dumps({"benchmarks": rows}))
    return folder


def test_summary_from_fabricated_stage_outputs(tmp_path: Path) -> None:
    folder = _fabricated(tmp_path / "run", {"cuda-tier": 0, "benchmarks": 1, "validate": 124})
    summary = summarise(folder, "NVIDIA H100 80GB HBM3", {"torch": "2.13.0", "peft": "0.21.2"})
    md = (folder / "evidence.md").read_text()
    print(md)
    assert [s["status"] for s in summary["stages"]] == ["passed", "failed (exit 1)", "timed out"]
    assert summary["passed"] is False and "Overall: FAILED" in md
    assert "| cuda-tier | passed | 2 | 7 passed, 2 skipped, 3 warnings in 84.21s (0:01:24) |" in md
    assert "| validate | timed out | 22 | verdict: PASS (12/12 criteria) |" in md
    assert "| test_training_speed[plain] | 1109 | 532 | 2.21 | 0.9% | 1.00 | - | - |" in md
    assert "| test_training_speed[harness_packed] | 5012 | 2650 | unknown | unknown | 4.98 | - | 3.50 |" in md
    assert "torch 2.13.0, peft 0.21.2" in md
    assert json.loads((folder / "evidence.json").read_text())["device"] == "NVIDIA H100 80GB HBM3"


def test_summary_passes_only_when_every_stage_passed(tmp_path: Path) -> None:
    folder = _fabricated(tmp_path / "run", {"cuda-tier": 0, "benchmarks": 0, "validate": 0})
    assert summarise(folder, "NVIDIA H100 80GB HBM3", {})["passed"] is True
    assert "Overall: PASSED" in (folder / "evidence.md").read_text()


def test_log_summary_prefers_the_pytest_tally() -> None:
    assert log_summary("x\n=== 1 failed, 3 passed in 2.00s ===\ntrailing noise\n") == "1 failed, 3 passed in 2.00s"
    assert log_summary("a\nlast line\n\n") == "last line"
    assert log_summary("") == ""

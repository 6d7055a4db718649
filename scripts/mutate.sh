#!/bin/bash
# Mutation-test one module against a narrow test selection, in a scratch copy of this checkout (so the
# working tree's pyproject and mutants/ stay untouched and several modules can be kept side by side).
# usage: scripts/mutate.sh MODULE TEST_FILE... ; results in ${MUTATE_DIR:-/tmp/mutate}/<module name>
set -euo pipefail
module=$1; shift
root=$(cd "$(dirname "$0")/.." && pwd)
work=${MUTATE_DIR:-/tmp/mutate}/$(basename "$module" .py)
rm -rf "$work" && mkdir -p "$work"
cp -r "$root/harness" "$root/tests" "$root/configs" "$root/conftest.py" "$root/pyproject.toml" "$work/"
cd "$work"
python - "$module" "$@" <<'PY'
import re, sys
module, tests = sys.argv[1], sys.argv[2:]
text = open("pyproject.toml").read()
text = re.sub(r"paths_to_mutate = \[.*?\]", f'paths_to_mutate = ["{module}"]', text)
selection = ", ".join(f'"{t}"' for t in tests)
text = re.sub(r"pytest_add_cli_args_test_selection = \[.*?\]", f"pytest_add_cli_args_test_selection = [{selection}]", text)
open("pyproject.toml", "w").write(text)
PY
# one thread: mutmut forks a child per mutant after torch started its thread pools, and a forked child
# waiting on a pool thread that was not copied hangs until the timeout (seen: 18 minutes)
OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONPATH=$work nice -n 19 mutmut run --max-children 1 || true
mutmut results --all true | awk -F': ' '{print $2}' | sort | uniq -c
mutmut results
echo "details: cd $work && mutmut show <mutant>"

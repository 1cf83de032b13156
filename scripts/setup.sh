#!/usr/bin/env bash
# Create or refresh the project's virtual environment at .venv (idempotent).
# A stamp holding the hash of pyproject.toml and the lock file makes a second run take about a second.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null 2>&1 || python=python3

stamp=.venv/.setup-stamp
want="$(cat pyproject.toml $( [ -f requirements.lock ] && echo requirements.lock ) | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && .venv/bin/python -c "import model, eval, train, reproduce, harness" 2>/dev/null; then
    exit 0
fi

[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# torch first, pinned: on machines with the local wheel cache pip takes it from disk.
.venv/bin/python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
constraint=()
[ -f requirements.lock ] && constraint=(-c requirements.lock)
.venv/bin/python -m pip install --quiet "${constraint[@]}" -e ".[dev]"
echo "$want" > "$stamp"
echo "setup: .venv ready ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"

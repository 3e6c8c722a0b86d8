#!/usr/bin/env bash
# README command 1: set up the environment (dev/install.sh), then run the main job on the built-in
# demo data: generate it if absent, train SFNet-Lite R18 on CPU, evaluate, save pictures.
# Extra arguments go to projects/SFNet/run_demo.py (e.g. SOLVER.MAX_ITER 100).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash dev/install.sh
export PYTHONWARNINGS="ignore::FutureWarning"
exec "${SFNET_VENV:-.venv}/bin/python" projects/SFNet/run_demo.py "$@"

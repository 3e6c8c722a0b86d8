#!/usr/bin/env bash
# README command 2: set up the environment (dev/install.sh), then run the test suite on CPU.
# Extra arguments go to pytest (e.g. -k flow -x).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash dev/install.sh
exec "${SFNET_VENV:-.venv}/bin/python" -m pytest tests -q -p no:cacheprovider "$@"

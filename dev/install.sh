#!/usr/bin/env bash
# Set up the environment sfnet-d2 runs in: a virtual environment at .venv/ (or $SFNET_VENV) with
#   1. torch==2.14.1 + torchvision==0.29.1
#   2. the runtime dependencies in requirements.txt
#   3. detectron2 v0.6 from the PyPI sdist pb1-detectron2==0.6, patched by
#      dev/fixup_detectron2_sdist.py and built in pure-Python mode (no detectron2 source is kept here)
#   4. panopticapi-lite==0.2.0 (--no-deps: its metadata asks for numpy<2)
#   5. sfnet-d2 itself, editable (setup.py)
# Idempotent: each step records a stamp of its inputs and is skipped when nothing changed, so a
# second run finishes in seconds. An environment that already has a working torch or detectron2
# (for example upstream detectron2 built with CUDA, with SFNET_VENV pointing at it) is left alone.
# A failed step stops the script with the step's name and what to do; the environment is only
# reported ready (stamp .sfnet-ready) after every step and a final import check succeeded.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SFNET_VENV:-$ROOT/.venv}"
PYTHON_BOOTSTRAP="${PYTHON:-python3}"
STAMPS="$VENV/.sfnet-stamps"
CACHE="$VENV/.sfnet-cache"
TORCH_PINS=(torch==2.14.1 torchvision==0.29.1)
D2_SDIST=pb1-detectron2==0.6
PANOPTICAPI=panopticapi-lite==0.2.0

say() { printf '[install] %s\n' "$*"; }
fail() {
  printf '[install] FAILED at step "%s": %s\n' "$1" "$2" >&2
  rm -f "$VENV/.sfnet-ready"
  exit 1
}
stamp_of() { cat "$@" 2>/dev/null | sha256sum | cut -c1-16; }
stamp_ok() { [ -f "$STAMPS/$1" ] && [ "$(cat "$STAMPS/$1")" = "$2" ]; }
stamp_set() { mkdir -p "$STAMPS"; printf '%s' "$2" >"$STAMPS/$1"; }
# pip, quiet, without the noise of this machine's local-index warnings; keeps pip's exit status.
pip_run() {
  local status
  "$PY" -m pip "$1" --disable-pip-version-check -q "${@:2}" 2>&1 | grep -v "^WARNING: Location" || true
  status=${PIPESTATUS[0]}
  return "$status"
}
pip_quiet() { pip_run install "$@"; }

# ---- step 0: the virtual environment ---------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
  say "creating virtual environment $VENV"
  "$PYTHON_BOOTSTRAP" -c 'import sys; assert sys.version_info >= (3, 9), sys.version' 2>/dev/null ||
    fail "venv" "'$PYTHON_BOOTSTRAP' is missing or older than Python 3.9; set PYTHON=/path/to/python3.11"
  "$PYTHON_BOOTSTRAP" -m venv "$VENV" || fail "venv" "'$PYTHON_BOOTSTRAP -m venv' failed; on Debian/Ubuntu install python3-venv"
fi
PY="$VENV/bin/python"
export PYTHONWARNINGS="ignore::FutureWarning"  # torch.jit deprecation noise from detectron2 imports
FINAL_CHECK='import torch, detectron2, sfnet_d2, panopticapi, cityscapesscripts; from detectron2.engine import DefaultTrainer'
ALL_STAMPS="requirements=$(stamp_of "$ROOT/requirements.txt") detectron2=$(stamp_of "$ROOT/dev/fixup_detectron2_sdist.py") project=$(stamp_of "$ROOT/setup.py")"

# Fast path: a complete earlier run with the same inputs, and everything still imports.
if [ -f "$VENV/.sfnet-ready" ] && [ "$(cat "$VENV/.sfnet-ready")" = "$ALL_STAMPS" ] && "$PY" -c "$FINAL_CHECK" 2>/dev/null; then
  say "environment ready (nothing changed since the last install): $VENV"
  exit 0
fi
rm -f "$VENV/.sfnet-ready"  # only a complete run marks the environment ready

# ---- step 1: torch ---------------------------------------------------------------------------
if "$PY" -c 'import torch, torchvision' 2>/dev/null; then
  say "torch: $("$PY" -c 'import torch, torchvision; print(torch.__version__, "/ torchvision", torchvision.__version__)') already installed, left alone"
else
  say "torch: installing ${TORCH_PINS[*]} (several GB on first install)"
  pip_quiet "${TORCH_PINS[@]}" || fail "torch" "pip could not install ${TORCH_PINS[*]}; check that PyPI is reachable and that there is disk space (df -h)"
fi

# ---- step 2: runtime dependencies ------------------------------------------------------------
S=$(stamp_of "$ROOT/requirements.txt")
if stamp_ok requirements "$S"; then
  say "runtime dependencies: up to date"
else
  say "runtime dependencies: installing requirements.txt"
  pip_quiet -r "$ROOT/requirements.txt" || fail "runtime dependencies" "pip install -r requirements.txt failed; the pip output above names the package"
  stamp_set requirements "$S"
fi

# ---- step 3: detectron2 ----------------------------------------------------------------------
S=$(stamp_of "$ROOT/dev/fixup_detectron2_sdist.py")
d2_state=$("$PY" - <<'PY' 2>/dev/null || echo missing
import importlib.util, os
spec = importlib.util.find_spec("detectron2")
if spec is None:
    print("missing")
else:
    import detectron2.engine, detectron2.data, detectron2.evaluation  # noqa: F401  (a working install)
    c = os.path.join(os.path.dirname(spec.origin), "_C.py")
    ours = os.path.isfile(c) and "SFNET_D2_PURE_PYTHON_DETECTRON2" in open(c).read()
    print("ours" if ours else "foreign")
PY
)
if [ "$d2_state" = "foreign" ]; then
  say "detectron2: a working detectron2 $("$PY" -c 'import detectron2; print(detectron2.__version__)') is already installed (not built by us), left alone"
elif [ "$d2_state" = "ours" ] && stamp_ok detectron2 "$S"; then
  say "detectron2: up to date (pure-Python build of $D2_SDIST)"
else
  say "detectron2: building $D2_SDIST in pure-Python mode"
  mkdir -p "$CACHE"
  tarball=$(ls "$CACHE"/pb1-detectron2-0.6.tar.gz 2>/dev/null || true)
  if [ -z "$tarball" ]; then
    # --no-build-isolation: the sdist's setup.py imports torch, installed in step 1.
    pip_run download --no-deps --no-build-isolation --no-binary :all: "$D2_SDIST" -d "$CACHE" ||
      true
    tarball=$(ls "$CACHE"/pb1-detectron2-0.6.tar.gz 2>/dev/null) ||
      fail "detectron2" "could not download $D2_SDIST from PyPI; check the network or put the file in $CACHE"
  fi
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  tar xzf "$tarball" -C "$work" || fail "detectron2" "$tarball is damaged; delete it and run again"
  "$PY" "$ROOT/dev/fixup_detectron2_sdist.py" "$work/pb1-detectron2-0.6" ||
    fail "detectron2" "the sdist did not match the expected detectron2 v0.6 text (message above)"
  pip_quiet --no-deps --no-build-isolation "$work/pb1-detectron2-0.6" ||
    fail "detectron2" "building the patched sdist failed (pip output above)"
  stamp_set detectron2 "$S"
fi

# ---- step 4: panopticapi ---------------------------------------------------------------------
if "$PY" -c 'import panopticapi.evaluation, panopticapi.utils' 2>/dev/null; then
  say "panopticapi: already installed"
else
  say "panopticapi: installing $PANOPTICAPI (--no-deps)"
  pip_quiet --no-deps "$PANOPTICAPI" || fail "panopticapi" "pip install --no-deps $PANOPTICAPI failed"
fi

# ---- step 5: this project --------------------------------------------------------------------
S=$(stamp_of "$ROOT/setup.py")
if stamp_ok project "$S" && "$PY" -c 'import sfnet_d2' 2>/dev/null; then
  say "sfnet-d2: installed (editable)"
else
  say "sfnet-d2: installing $ROOT in editable mode"
  pip_quiet --no-deps --no-build-isolation -e "$ROOT" || fail "sfnet-d2" "pip install -e . failed (pip output above)"
  stamp_set project "$S"
fi

# ---- final check -----------------------------------------------------------------------------
"$PY" -c "$FINAL_CHECK" ||
  fail "final import check" "the environment imports failed (traceback above); delete $VENV and run dev/install.sh again"
printf '%s' "$ALL_STAMPS" >"$VENV/.sfnet-ready"
say "environment ready: $VENV"

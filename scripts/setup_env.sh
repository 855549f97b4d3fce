#!/usr/bin/env bash
# Creates .venv (Python 3.12) with everything the project needs, in one pip call, and writes the
# LIBERO config so that importing libero never prompts. Idempotent: does nothing when the venv is
# up to date with pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VLA_VENV:-.venv}
stamp="$VENV/.vla-installed"
want=$(sha256sum pyproject.toml scripts/setup_env.sh | sha256sum | cut -c1-16)

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi

find_python() {
  for cand in "${VLA_PYTHON:-}" python3.12 "$HOME"/.pyenv/versions/3.12*/bin/python3.12; do
    [ -n "$cand" ] || continue
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
      command -v "$cand"; return 0
    fi
  done
  return 1
}
PY=$(find_python) || { echo "setup: Python 3.12 not found. Install it (e.g. 'pyenv install 3.12') or set VLA_PYTHON." >&2; exit 1; }

echo "setup: creating $VENV with $PY (first run takes a few minutes, ~8 GB)"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
# One resolver pass for the whole stack (see pyproject.toml).
"$VENV/bin/python" -m pip install --quiet --progress-bar off -e ".[dev]"
"$VENV/bin/python" -m vla.setup_libero
# openpi's own client, for the compatibility test of `vla serve`: kept as a wheel beside the venv and put on
# sys.path by that test only, never installed (it pins numpy<2; the two modules the test uses need no numpy 1).
"$VENV/bin/python" -m pip download --quiet --no-deps --dest "$VENV/test-wheels" "openpi-client==0.1.2"
echo "$want" > "$stamp"
echo "setup: done"

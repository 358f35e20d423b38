# Shared by scripts/demo and scripts/test: make .venv with edgefleet installed, once.
# Re-installs only when pyproject.toml changes. Sourced, not run.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

find_python() {
    for candidate in python3.13 python3.12 python3.11 python3; do
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            echo "$candidate"
            return
        fi
    done
    echo "edgefleet needs Python 3.11 or newer on PATH" >&2
    exit 1
}

VENV="$ROOT/.venv"
STAMP="$VENV/.edgefleet-installed"
WANT="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ]; then
    echo "==> creating $VENV" >&2
    "$(find_python)" -m venv "$VENV"
fi
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
    echo "==> installing edgefleet and its dependencies into .venv (once)" >&2
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e ".[dev]"
    echo "$WANT" >"$STAMP"
fi
export PATH="$VENV/bin:$PATH"
# The dashboard's browser libraries (xterm.js), from npm, once per web/package-lock.json.
"$ROOT/scripts/vendor-web" || echo "==> the dashboard's terminal stays off until scripts/vendor-web runs" >&2

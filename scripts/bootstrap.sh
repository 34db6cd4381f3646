# Shared by scripts/run and scripts/test: a project virtualenv in .venv with the package installed.
# Usage: source scripts/bootstrap.sh [extra]   (extra: "test" installs the test tools too)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if [ ! -x .venv/bin/python ]; then
  if ! python3 -m venv .venv 2>/dev/null; then
    # Debian ships venv separately.
    as_root apt-get update -qq && as_root apt-get install -y -qq python3-venv >/dev/null
    rm -rf .venv && python3 -m venv .venv
  fi
fi
# Dependencies come from the lock (exact versions, hashes checked), the same one the Docker image
# installs; then the project itself, editable, so tests import the working tree's bot/.
lock="requirements.lock"
[ "${1:-}" = "test" ] && lock="requirements-test.lock"
stamp=".venv/.installed-$(cat pyproject.toml "$lock" | sha1sum | cut -c1-12)-${1:-run}"
if [ ! -f "$stamp" ]; then
  pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)
  "${pip[@]}" --require-hashes --no-deps -r "$lock"
  "${pip[@]}" --no-deps -e .
  touch "$stamp"
fi

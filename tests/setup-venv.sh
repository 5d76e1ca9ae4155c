#!/usr/bin/env bash
# Create (or reuse) the test virtualenv at target/test-venv with the Python that
# wsgi-gateway is built against, and install tests/requirements.txt into it.
# Prints the venv's path. Idempotent: reinstalls only when the requirements or
# the interpreter change.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYO3_PYTHON:-$(command -v pyenv >/dev/null && pyenv which python3 || command -v python3)}
venv="$root/target/test-venv"
stamp="$venv/.requirements.sha"
# (The interpreter is part of the stamp: another PYO3_PYTHON gets a new venv.)
want=$( { cat "$root/tests/requirements.txt"; echo "$python"; "$python" -c 'import sys; print(sys.version)'; } \
  | sha256sum | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  rm -rf "$venv"
  "$python" -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$root/tests/requirements.txt" >&2
  echo "$want" > "$stamp"
fi
echo "$venv"

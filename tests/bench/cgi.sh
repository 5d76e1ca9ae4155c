#!/usr/bin/env bash
# CGI benchmark: wall time of ONE whole CGI request, process start to exit,
# served by target/release/wsgi-cgi versus the standard library's
# wsgiref.handlers.CGIHandler (tests/bench/wsgiref_cgi.py), for two apps:
#
#   hello      tests/apps/hello.py      start-up cost of the gateway itself
#   flask_app  tests/apps/flask_app.py  a real framework import dominates
#
# Both sides use the same interpreter (the one wsgi-cgi is linked against) and
# the same virtualenv (target/test-venv, from tests/setup-venv.sh), and see one
# identical, minimal CGI environment (env -i: GET /, no body, stdin /dev/null,
# stdout a pipe, like a web server). `python -c pass` in the same venv is the
# floor: a bare interpreter start with site processing, doing nothing.
#
# How to read it: one hyperfine run per app, so the rows of one table were
# measured interleaved under the same machine noise. Absolute milliseconds
# mean little on a noisy box; compare within a table. `ratio` is
# median(wsgi-cgi) / median(wsgiref); the targets are hello <= 0.5 and
# flask <= 0.9. `min` is the least noisy estimate of the cost; `user` is mean
# user CPU time. Raw per-run timings are in target/bench/cgi-<app>.json.
#
# Warm mode (`wsgi-cgi --warm`) runs beside them: a warm request (the
# responder already running; target <= 0.15x wsgiref's cold hello: the relay
# must not load or start Python), and the first request of a cold app (no
# responder: this request starts it; target <= 1.1x our cold path).
#
# Then, unless APACHE=0, the same apps through Apache mod_cgid on a loopback
# port (tests/bench/cgi-apache.sh): one request at a time, wsgi-cgi cold and
# --warm, wsgiref CGIHandler, and the app behind a resident wsgi-fcgi through
# mod_proxy_fcgi.
#
# Usage: tests/bench/cgi.sh   (env knobs: RUNS=40 WARMUP=5 APACHE=1 PYO3_PYTHON)
# Command lines are split on spaces (hyperfine -N): the checkout path must not
# contain spaces.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
RUNS=${RUNS:-40}
WARMUP=${WARMUP:-5}

die() { echo "cgi.sh: $*" >&2; exit 1; }
command -v hyperfine >/dev/null || die "hyperfine is not installed"

# Build against the same interpreter as the test venv (tests/run does the same).
if [ -z "${PYO3_PYTHON:-}" ]; then
  if command -v pyenv >/dev/null; then PYO3_PYTHON=$(pyenv which python3); else PYO3_PYTHON=$(command -v python3); fi
fi
export PYO3_PYTHON
cargo build --release --bins >&2
VENV=$(tests/setup-venv.sh)
BIN=$root/target/release/wsgi-cgi
PY=$VENV/bin/python
out=$root/target/bench
mkdir -p "$out"

# One CGI request, as a web server would pass it (RFC 3875 meta-variables).
# env -i: nothing from the caller's environment (PYTHONPATH, LANG, ...) leaks in.
cgi_env=(
  env -i PATH=/usr/local/bin:/usr/bin:/bin
  GATEWAY_INTERFACE=CGI/1.1 SERVER_SOFTWARE=wsgi-gateway-bench
  REQUEST_METHOD=GET SCRIPT_NAME= PATH_INFO=/ QUERY_STRING=
  SERVER_NAME=localhost SERVER_PORT=80 SERVER_PROTOCOL=HTTP/1.1
  REMOTE_ADDR=127.0.0.1 REMOTE_PORT=54321 HTTP_HOST=localhost HTTP_USER_AGENT=bench
)

ours()    { echo "$BIN --venv $VENV --app tests/apps/$1.py"; }
WARM_DIR=$out/warm-direct
warm()    { echo "$BIN --venv $VENV --app tests/apps/$1.py --warm --warm-dir $WARM_DIR --warm-idle 600"; }
rm -rf "$WARM_DIR"
stop_warm() { pkill -KILL -f "[w]sgi-fcgi.*$WARM_DIR" 2>/dev/null || true; }
# (hyperfine's --prepare: the responder gone before each "first request" run.)
printf '#!/bin/sh\npkill -KILL -f "[w]sgi-fcgi.*%s"\nexit 0\n' "$WARM_DIR" >"$out/kill-warm.sh"
chmod +x "$out/kill-warm.sh"
trap stop_warm EXIT
wsgiref() { echo "$PY tests/bench/wsgiref_cgi.py tests/apps/$1.py"; }
floor="$PY -c pass"

# Fail loudly unless the command serves a 200 (a fast 500 would be a lie).
check() {
  local cmd=$1 stdout stderr
  stderr=$(mktemp)
  # shellcheck disable=SC2086  # the command line is split on purpose
  stdout=$("${cgi_env[@]}" $cmd </dev/null 2>"$stderr") || true
  if [[ $stdout != "Status: 200"* ]]; then
    echo "cgi.sh: sanity check FAILED for: $cmd" >&2
    echo "--- stdout ---" >&2; printf '%s\n' "$stdout" | head -20 >&2
    echo "--- stderr ---" >&2; head -40 "$stderr" >&2
    rm -f "$stderr"; exit 1
  fi
  rm -f "$stderr"
}

apps=(hello flask_app)
for app in "${apps[@]}"; do check "$(ours "$app")"; check "$(wsgiref "$app")"; check "$(warm "$app")"; done

for app in "${apps[@]}"; do
  echo "== $app: $RUNS runs, $WARMUP warm-up ==" >&2
  "${cgi_env[@]}" hyperfine -N --style basic --output pipe \
    --warmup "$WARMUP" --runs "$RUNS" --export-json "$out/cgi-$app.json" \
    -n "wsgi-cgi"          "$(ours "$app")" \
    -n "wsgi-cgi --warm"   "$(warm "$app")" \
    -n "wsgiref CGIHandler" "$(wsgiref "$app")" \
    -n "python -c pass"    "$floor" >&2
  # The first request of a cold app: no responder (killed before each run).
  echo "== $app, first request: $RUNS runs ==" >&2
  "${cgi_env[@]}" hyperfine -N --style basic --output pipe \
    --warmup 1 --runs "$RUNS" --export-json "$out/cgi-first-$app.json" \
    --prepare "$out/kill-warm.sh" \
    -n "wsgi-cgi"          "$(ours "$app")" \
    -n "wsgi-cgi --warm, no responder yet" "$(warm "$app")" >&2
done
stop_warm

echo
echo "wsgi-cgi:           $(ours '<app>')"
echo "wsgi-cgi --warm:    $(warm '<app>')"
echo "wsgiref CGIHandler: $(wsgiref '<app>')"
echo "python -c pass:     $floor"
echo "(RUNS=$RUNS WARMUP=$WARMUP, $(nproc) CPUs, $("$PY" -VV | head -1))"
"$PY" - "$out" "${apps[@]}" <<'EOF'
import json, sys

out, apps = sys.argv[1], sys.argv[2:]
targets = {"hello": 0.5, "flask_app": 0.9}
for app in apps:
    with open(f"{out}/cgi-{app}.json") as f:
        rows = {r["command"]: r for r in json.load(f)["results"]}
    print(f"\n{app}")
    print(f"  {'command':<20} {'median ms':>10} {'min ms':>8} {'user ms':>8} {'sys ms':>8}")
    for name, r in rows.items():
        print(f"  {name:<20} {r['median']*1e3:>10.2f} {r['min']*1e3:>8.2f} {r['user']*1e3:>8.2f} {r['system']*1e3:>8.2f}")
    ours, ref = rows["wsgi-cgi"], rows["wsgiref CGIHandler"]
    ratio = ours["median"] / ref["median"]
    ratio_min = ours["min"] / ref["min"]
    target = targets[app]
    verdict = "target MET" if ratio <= target else "target NOT met"
    print(f"  ratio wsgi-cgi/wsgiref: {ratio:.3f} (median), {ratio_min:.3f} (min); target <= {target}: {verdict}")
    warm = rows["wsgi-cgi --warm"]
    ratio = warm["median"] / ref["median"]
    line = f"  ratio warm/wsgiref: {ratio:.3f} (median), {warm['min'] / ref['min']:.3f} (min)"
    if app == "hello":
        line += f"; target <= 0.15: {'target MET' if ratio <= 0.15 else 'target NOT met'}"
    print(line)
    with open(f"{out}/cgi-first-{app}.json") as f:
        first = {r["command"]: r for r in json.load(f)["results"]}
    cold, start = first["wsgi-cgi"], first["wsgi-cgi --warm, no responder yet"]
    ratio = start["median"] / cold["median"]
    print(f"  first request, warm/cold: {start['median']*1e3:.2f} / {cold['median']*1e3:.2f} ms = {ratio:.3f}; "
          f"target <= 1.1: {'target MET' if ratio <= 1.1 else 'target NOT met'}")
EOF

[ "${APACHE:-1}" = 1 ] || exit 0
exec tests/bench/cgi-apache.sh

#!/usr/bin/env bash
# CGI benchmark through a real web server: Apache mod_cgid (and
# mod_proxy_fcgi) on a loopback port, one request at a time (wrk -t1 -c1,
# `Connection: close`: a new connection and a new CGI process per request,
# as browsers meet a cgi-bin). For each app (hello, flask_app), side by side
# in one run, interleaved over two rounds (the better round counts):
#
#   wsgi-cgi             script mode, cold: Python starts per request
#   wsgi-cgi --warm      script mode with `warm = true` (responder running)
#   wsgiref CGIHandler   the standard library's CGI gateway, per request
#   wsgi-fcgi            the app behind a resident wsgi-fcgi (--threads 1)
#                        through mod_proxy_fcgi: what warm mode approaches
#   /bin/sh CGI          a shell script printing a fixed response: the floor
#                        of any CGI program under mod_cgid (fork, exec, pipes)
#
# Targets (issue "shared hosting"): warm Flask <= 0.05x wsgiref's Flask, and
# within 1.3x of wsgi-fcgi's. Run by tests/bench/cgi.sh (or alone); needs
# apache2 (mpm_event, cgid, proxy_fcgi) and wrk.
#
# Usage: tests/bench/cgi-apache.sh   (env knobs: SECONDS_PER=5 PYO3_PYTHON)
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
bench=cgi-apache.sh
# shellcheck source=tests/bench/lib.sh
source tests/bench/lib.sh
need_tools wrk curl
APACHE2=$(command -v apache2 || echo /usr/sbin/apache2)
[ -x "$APACHE2" ] || die "apache2 is not installed"
default_pyo3_python
cargo build --release --bins >&2
VENV=$(tests/setup-venv.sh)
PY=$VENV/bin/python
BIN=$root/target/release/wsgi-cgi
SECONDS_PER=${SECONDS_PER:-5}
apps=(hello flask_app)

run=$(mktemp -d /tmp/wsgi-bench-cgi.XXXXXX)
chmod 755 "$run"
pids=()
cleanup() {
  pkill -KILL -f "$run/warm" 2>/dev/null || true
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$run"
}
trap cleanup EXIT

mkdir -p "$run/cgi-bin" "$run/htdocs" "$run/warm"
chmod 700 "$run/warm"
user_lines=
if [ "$(id -u)" -eq 0 ]; then
  # Apache runs CGI programs as www-data: the warm directory is theirs.
  chown www-data: "$run/warm"
  user_lines=$'User www-data\nGroup www-data'
fi
for app in "${apps[@]}"; do
  file=$root/tests/apps/$app.py
  printf '#!%s\napp = "%s"\nvenv = "%s"\n' "$BIN" "$file" "$VENV" >"$run/cgi-bin/$app-cold.cgi"
  printf '#!%s\napp = "%s"\nvenv = "%s"\nwarm = true\nwarm-dir = "%s/warm"\nwarm-idle = 600\n' \
    "$BIN" "$file" "$VENV" "$run" >"$run/cgi-bin/$app-warm.cgi"
  printf '#!/bin/sh\nexec %s %s/tests/bench/wsgiref_cgi.py %s\n' "$PY" "$root" "$file" \
    >"$run/cgi-bin/$app-wsgiref.cgi"
  "$root/target/release/wsgi-fcgi" --venv "$VENV" --app "$file" --threads 1 \
    --bind "unix:$run/$app.sock" --socket-mode 666 2>"$run/$app-fcgi.log" &
  pids+=($!)
done
printf '#!/bin/sh\nprintf "Status: 200 OK\\r\\nContent-Type: text/plain\\r\\n\\r\\nfloor\\n"\n' >"$run/cgi-bin/floor.cgi"
chmod 755 "$run"/cgi-bin/*

port=$(( 20000 + RANDOM % 20000 ))
{
  echo "ServerRoot $run"
  echo "PidFile $run/httpd.pid"
  echo "ErrorLog $run/error.log"
  echo "Listen 127.0.0.1:$port"
  echo "ServerName 127.0.0.1"
  echo "$user_lines"
  echo "TypesConfig /etc/mime.types"
  echo "ScriptSock $run/cgid.sock"
  echo "DocumentRoot $run/htdocs"
  for m in mpm_event authz_core mime alias cgid proxy proxy_fcgi log_config unixd; do
    printf '<IfModule !%s_module>\n    LoadModule %s_module /usr/lib/apache2/modules/mod_%s.so\n</IfModule>\n' "$m" "$m" "$m"
  done
  echo "ScriptAlias /cgi-bin/ $run/cgi-bin/"
  echo "<Directory $run/cgi-bin>"
  echo "    Require all granted"
  echo "</Directory>"
  for app in "${apps[@]}"; do
    echo "ProxyPass /fcgi-$app/ unix:$run/$app.sock|fcgi://localhost/"
    echo "<Location /fcgi-$app/>"
    echo "    Require all granted"
    echo "</Location>"
  done
} >"$run/httpd.conf"
for app in "${apps[@]}"; do
  for _ in $(seq 200); do [ -S "$run/$app.sock" ] && break; sleep 0.05; done
done
"$APACHE2" -f "$run/httpd.conf" -DFOREGROUND 2>>"$run/error.log" &
pids+=($!)
for _ in $(seq 200); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.05; done

url_of() { # app kind
  case $2 in
    fcgi) echo "http://127.0.0.1:$port/fcgi-$1/" ;;
    floor) echo "http://127.0.0.1:$port/cgi-bin/floor.cgi" ;;
    *) echo "http://127.0.0.1:$port/cgi-bin/$1-$2.cgi/" ;;
  esac
}
kinds=(cold warm wsgiref fcgi floor)
for app in "${apps[@]}"; do
  for kind in "${kinds[@]}"; do
    code=$(curl -s -o /dev/null -w '%{http_code}' "$(url_of "$app" "$kind")" || true)
    [ "$code" = 200 ] || { tail -20 "$run/error.log" >&2; die "$app $kind answered $code"; }
  done
done

# Mean milliseconds per request over SECONDS_PER seconds of one connection.
latency() {
  wrk -t1 -c1 -d"${SECONDS_PER}s" -H 'Connection: close' "$1" |
    awk '/Requests\/sec/ { printf "%.3f", 1000 / $2 }'
}

echo
echo "Through Apache mod_cgid: mean ms per request, one at a time, ${SECONDS_PER}s per row, best of 2 interleaved rounds"
echo "(commit $(bench_commit), $(nproc) CPUs, $("$PY" -VV | head -1))"
for app in "${apps[@]}"; do
  declare -A best=()
  for _round in 1 2; do
    for kind in "${kinds[@]}"; do
      ms=$(latency "$(url_of "$app" "$kind")")
      if [ -z "${best[$kind]:-}" ] || awk -v a="$ms" -v b="${best[$kind]}" 'BEGIN { exit !(a < b) }'; then
        best[$kind]=$ms
      fi
    done
  done
  awk -v app="$app" -v cold="${best[cold]}" -v warm="${best[warm]}" \
    -v ref="${best[wsgiref]}" -v fcgi="${best[fcgi]}" -v floor="${best[floor]}" 'BEGIN {
    printf "\n%s\n", app
    printf "  %-28s %8.2f ms\n", "wsgi-cgi (cold)", cold
    printf "  %-28s %8.2f ms\n", "wsgi-cgi --warm", warm
    printf "  %-28s %8.2f ms\n", "wsgiref CGIHandler", ref
    printf "  %-28s %8.2f ms\n", "wsgi-fcgi (mod_proxy_fcgi)", fcgi
    printf "  %-28s %8.2f ms\n", "/bin/sh CGI (the floor)", floor
    r1 = warm / ref; r2 = warm / fcgi
    t1 = t2 = ""
    if (app == "flask_app") {
      t1 = (r1 <= 0.05) ? "; target <= 0.05: target MET" : "; target <= 0.05: target NOT met"
      t2 = (r2 <= 1.3) ? "; target <= 1.3: target MET" : "; target <= 1.3: target NOT met"
    }
    printf "  ratio warm/wsgiref %.3f%s\n", r1, t1
    printf "  ratio warm/wsgi-fcgi %.2f%s\n", r2, t2
    printf "  warm minus the floor %.2f ms; the floor alone is %.1fx wsgi-fcgi\n", warm - floor, floor / fcgi
  }'
  unset best
done

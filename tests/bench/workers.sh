#!/usr/bin/env bash
# Multi-process benchmark: N worker processes of each contender behind nginx,
# driven by wrk, in ONE run. N = WORKERS (default: nproc), T app threads per
# worker (THREADS, default 1). All contenders use the same interpreter and the
# same virtualenv (target/bench-venv: flask, flup, uwsgi, gunicorn).
#
# Contenders (SYSTEMS):
#   ours              wsgi-fcgi --workers N --threads T (a master, its template
#                     holding the imported app — --preload is the default —
#                     and N workers forked from it);
#                     NGINX_MODE=keepalive (default): nginx fastcgi_pass with
#                     an upstream keepalive pool and fastcgi_keep_conn on;
#                     NGINX_MODE=default: nginx's plain fastcgi_pass (a new
#                     connection per request, as every tutorial writes it)
#   ours-nopreload    the same with --no-preload (each worker imports the app
#                     itself: compare pss/wk)
#   ours-iothread     the same with --kept-on-io-thread (kept connections
#                     served by the I/O thread, the path before kept.rs;
#                     NGINX_MODE=keepalive is where it differs)
#   ours-other        the same with --sched other (Linux's default scheduling
#                     policy instead of ours, SCHED_BATCH: what the policy
#                     alone gives)
#   ours-nopython     the same answering every request with its ping page
#                     (--ping-path /: no Python at all), hello only: the
#                     ceiling this front end, wrk and the box allow a server
#                     here (a ratio ours/uwsgi above ours-nopython/uwsgi
#                     cannot be had by any server that runs the app)
#   uwsgi             uwsgi --master --processes N --threads T --fastcgi-socket;
#                     nginx fastcgi_pass without keepalive (uWSGI closes every
#                     connection after END_REQUEST anyway)
#   uwsgi-batch       uWSGI the same, started under `chrt -b 0` (SCHED_BATCH,
#                     inherited by its workers: the policy alone, for uWSGI)
#   gunicorn-sync     gunicorn --workers N --worker-class sync, HTTP on a unix
#                     socket; nginx proxy_pass (HTTP/1.1, upstream keepalive
#                     pool; the sync worker closes after each response anyway)
#   gunicorn-gthread  gunicorn --workers N --worker-class gthread --threads T;
#                     nginx proxy_pass with upstream keepalive (gthread keeps
#                     connections alive)
#   flup-prefork      tests/bench/flup_prefork.py: flup.server.fcgi_fork, a
#                     PHP-FPM-style static pool of N single-threaded children;
#                     nginx fastcgi_pass without keepalive (a child is held by
#                     its connection until it closes)
#
# FRONT=haproxy puts HAProxy (one thread) in front instead of nginx, for the
# FastCGI contenders: ours multiplexed (fcgi-app with keep-conn, mpxs-conns,
# max-reqs 10, get-values; http-reuse always), uwsgi and flup-prefork with
# keep-conn (they answer no GET_VALUES and do not multiplex).
#
# Workloads (WORKLOADS):
#   hello  tests/apps/hello.py           "Hello, world!\n"
#   flask  tests/apps/flask_app.py  /    "Hello from Flask\n"
#
# Path: wrk -t1 -cCONNECTIONS over loopback TCP to one nginx worker
# (worker_processes 1) that passes to the contender over a unix socket. Each
# contender is started fresh per workload, must answer 200 with the exact
# expected body through nginx (or the script stops), is warmed up (WARMUP
# seconds of the same load, not counted), then measured for DURATION seconds.
#
# Columns: req/s; p50/p99 latency (wrk's, ms); err (non-2xx + socket errors,
# must be 0); srv cores / cpu us/req = CPU of the contender's whole process
# tree (master + workers) over the window, per wall second / per request;
# other = cores used by anything else on the box in the window (noise:
# distrust a row where it is high); wk = worker processes found; top wk =
# the busiest worker's share of the workers' CPU in the window (100/N% =
# perfectly even, 100% = one worker did everything); rss/wk =
# sum of the workers' VmRSS / N (MiB), pss/wk = sum of their Pss
# (/proc/PID/smaps_rollup: shared pages split among the sharers) / N, both
# read right after the measurement; master = the parent's VmRSS (ours
# with --preload, the default: plus its template's, which holds the app). Ratios:
# ours/other (req/s > 1: ours faster; latency and memory < 1: ours lower).
# For Flask, the app's own CPU per request is measured in process (a prepared
# environ, no server) and each server's overhead = cpu/req minus that: with
# the variables nginx passes here (Debian's fastcgi_params; what the app
# really handles), and with a minimal environ (the older, lower figure).
# PERF=1: perf samples the workers (cpu-clock, 999 Hz) during the measured
# window and a line per system says where their CPU went: the interpreter
# (libpython), the kernel, the server's own code (its binary), libc and the
# rest. For Flask it also prints the overhead floor: the overhead a server
# would have if its own code and libc cost nothing — the interpreter's time
# beyond Flask's in-process cost (the same app running colder, preempted
# between the front end and the load generator) plus the kernel's (the
# syscalls and context switches of a connection per request). Sampling costs
# a few percent of throughput: compare shares, not the req/s of a PERF run.
# COUNT=1: perf stat counts the workers' syscalls, context switches, page
# faults and CPU migrations over the measured window; a line per system
# gives them per request (wrk's count; a few requests of the window's edges
# are not counted by both, so read the first two digits).
# Helpers shared with tests/bench/fcgi.sh: tests/bench/lib.sh.
#
# Usage: tests/bench/workers.sh
# Env knobs (whole seconds): WORKERS=$(nproc) THREADS=1 DURATION=5 WARMUP=1
#   CONNECTIONS=16 WORKLOADS="hello flask"
#   SYSTEMS="ours ours-iothread ours-nopreload ours-other ours-nopython uwsgi uwsgi-batch gunicorn-sync gunicorn-gthread flup-prefork"
#   NGINX_PORT=18089 NGINX_MODE=keepalive|default FRONT=nginx|haproxy PERF=0 COUNT=0 RUN_DIR=(a fresh /tmp/workers-bench.XXXXXX) PYO3_PYTHON
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
WORKERS=${WORKERS:-$(nproc)}
THREADS=${THREADS:-1}
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
CONNECTIONS=${CONNECTIONS:-16}
WORKLOADS=${WORKLOADS:-"hello flask"}
SYSTEMS=${SYSTEMS:-"ours ours-iothread ours-nopreload ours-other ours-nopython uwsgi uwsgi-batch gunicorn-sync gunicorn-gthread flup-prefork"}
NGINX_PORT=${NGINX_PORT:-18089}
NGINX_MODE=${NGINX_MODE:-keepalive}
FRONT=${FRONT:-nginx}
case $FRONT in nginx|haproxy) ;; *) echo "FRONT must be nginx or haproxy" >&2; exit 2 ;; esac
case $NGINX_MODE in default|keepalive) ;; *) echo "NGINX_MODE must be default or keepalive" >&2; exit 2 ;; esac

echo "command: WORKERS=$WORKERS THREADS=$THREADS DURATION=$DURATION WARMUP=$WARMUP" \
  "CONNECTIONS=$CONNECTIONS WORKLOADS=\"$WORKLOADS\" SYSTEMS=\"$SYSTEMS\" NGINX_PORT=$NGINX_PORT" \
  "NGINX_MODE=$NGINX_MODE FRONT=$FRONT" \
  "$0${*:+ $*}"

bench=workers.sh
# die, log, app_file, expected_body, CPU accounting, nginx start/stop, cleanup.
. "$root/tests/bench/lib.sh"
need_tools wrk nginx curl
[ "$WORKERS" -ge 1 ] 2>/dev/null || die "WORKERS must be a positive integer"
[ "$THREADS" -ge 1 ] 2>/dev/null || die "THREADS must be a positive integer"

RUN_DIR=${RUN_DIR:-$(mktemp -d /tmp/workers-bench.XXXXXX)}
run=$RUN_DIR
mkdir -p "$run"
results=$run/results.jsonl
: > "$results"
log "logs and raw results in $run"

# --- ours, the venv, gunicorn ------------------------------------------------
if [ ! -x target/release/wsgi-fcgi ]; then
  default_pyo3_python
  log "target/release/wsgi-fcgi is missing: building it"
  cargo build --release --bin wsgi-fcgi >&2
fi
# A private copy: a concurrent `cargo build` cannot swap the binary mid-run.
cp target/release/wsgi-fcgi "$run/wsgi-fcgi"
BIN=$run/wsgi-fcgi

VENV=$root/target/bench-venv
PY=$VENV/bin/python
[ -x "$VENV/bin/uwsgi" ] && "$PY" -c 'import flask, flup' 2>/dev/null \
  || die "$VENV lacks uwsgi/flask/flup: run tests/bench/fcgi.sh once to create it"
if [ ! -x "$VENV/bin/gunicorn" ]; then
  log "installing gunicorn into $VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check gunicorn >&2
fi
# gunicorn >= 23-ish opens a control socket in ~/.gunicorn by default: not wanted here.
GUNICORN_EXTRA=()
if "$VENV/bin/gunicorn" --help 2>/dev/null | grep -q -- --no-control-socket; then GUNICORN_EXTRA=(--no-control-socket); fi
# uWSGI must embed the same libpython as ours (gunicorn and flup run on the venv's python).
same_libpython_or_die "$BIN" "$VENV/bin/uwsgi"

if curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$NGINX_PORT/"; then
  die "something already listens on 127.0.0.1:$NGINX_PORT (another benchmark?): set NGINX_PORT"
fi

workload_ok() { # this script runs hello and flask (app_file and expected_body: lib.sh)
  case $1 in
    hello|flask) ;;
    *) die "unknown workload $1" ;;
  esac
}
app_module() { # gunicorn's module:callable (with --chdir tests/apps)
  case $1 in
    hello) echo hello:application ;;
    flask) echo flask_app:app ;;
  esac
}
server_cmd() { # system workload socket -> the command line (one word per line)
  local app; app=$(app_file "$2")
  case $1 in
    ours) printf '%s\n' "$BIN" --app "$app" --bind "unix:$3" --workers "$WORKERS" --threads "$THREADS" \
            --venv "$VENV" --socket-mode 666 ;;
    ours-nopreload) printf '%s\n' "$BIN" --app "$app" --bind "unix:$3" --workers "$WORKERS" --threads "$THREADS" \
            --venv "$VENV" --socket-mode 666 --no-preload ;;
    ours-iothread) printf '%s\n' "$BIN" --app "$app" --bind "unix:$3" --workers "$WORKERS" --threads "$THREADS" \
            --venv "$VENV" --socket-mode 666 --kept-on-io-thread ;;
    ours-other) printf '%s\n' "$BIN" --app "$app" --bind "unix:$3" --workers "$WORKERS" --threads "$THREADS" \
            --venv "$VENV" --socket-mode 666 --sched other ;;
    ours-nopython) printf '%s\n' "$BIN" --app "$app" --bind "unix:$3" --workers "$WORKERS" --threads "$THREADS" \
            --venv "$VENV" --socket-mode 666 --ping-path / ;;
    uwsgi) printf '%s\n' "$VENV/bin/uwsgi" --master --processes "$WORKERS" --threads "$THREADS" \
            --fastcgi-socket "$3" --chmod-socket=666 --wsgi-file "$app" --home "$VENV" --disable-logging ;;
    uwsgi-batch) printf '%s\n' chrt -b 0 "$VENV/bin/uwsgi" --master --processes "$WORKERS" --threads "$THREADS" \
            --fastcgi-socket "$3" --chmod-socket=666 --wsgi-file "$app" --home "$VENV" --disable-logging ;;
    gunicorn-sync) printf '%s\n' "$VENV/bin/gunicorn" --workers "$WORKERS" --worker-class sync \
            --bind "unix:$3" ${GUNICORN_EXTRA[@]+"${GUNICORN_EXTRA[@]}"} --chdir tests/apps "$(app_module "$2")" ;;
    gunicorn-gthread) printf '%s\n' "$VENV/bin/gunicorn" --workers "$WORKERS" --worker-class gthread \
            --threads "$THREADS" --bind "unix:$3" ${GUNICORN_EXTRA[@]+"${GUNICORN_EXTRA[@]}"} --chdir tests/apps "$(app_module "$2")" ;;
    flup-prefork) printf '%s\n' "$PY" tests/bench/flup_prefork.py "$app" "$3" "$WORKERS" ;;
    *) die "unknown system $1" ;;
  esac
}
nginx_mode() { # how nginx talks to the system
  case $1 in
    ours|ours-nopreload|ours-iothread|ours-other|ours-nopython)
      # NGINX_MODE=default: the plain `fastcgi_pass` of every tutorial (a
      # new connection per request); keepalive: an upstream keepalive pool
      # with fastcgi_keep_conn on.
      if [ "$NGINX_MODE" = default ]; then echo fastcgi; else echo fastcgi-keepalive; fi ;;
    uwsgi|uwsgi-batch|flup-prefork) echo fastcgi ;;
    gunicorn-*) echo http-keepalive ;;
  esac
}

# --- process helpers -----------------------------------------------------------
# (children, proc_cpu_ticks, machine_busy_ticks, now_s and TICK are in lib.sh.)
tree_pids() { # pid and all its descendants
  local p c
  echo "$1"
  for c in $(children "$1"); do tree_pids "$c"; done
}
tree_cpu_ticks() {
  local total=0 p
  for p in $(tree_pids "$1"); do total=$(( total + $(proc_cpu_ticks "$p") )); done
  echo "$total"
}
status_kib() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status" 2>/dev/null || true; }
pss_kib() { awk '$1 == "Pss:" {print $2}' "/proc/$1/smaps_rollup" 2>/dev/null || true; }

# --- servers -------------------------------------------------------------------
SERVER_PID=
STOP_SIGNAL=TERM
start_server() { # system workload socket
  local system=$1 sock=$3 i
  local -a cmd
  mapfile -t cmd < <(server_cmd "$1" "$2" "$3")
  rm -f "$sock"
  echo "${cmd[*]}" > "$run/$system-$2.cmd"
  "${cmd[@]}" >"$run/$system-$2.log" 2>&1 &
  SERVER_PID=$!
  STOP_SIGNAL=TERM; case $system in uwsgi*) STOP_SIGNAL=INT ;; esac
  # Up when the socket exists and all N workers are forked.
  for i in $(seq 200); do
    kill -0 "$SERVER_PID" 2>/dev/null || break
    if [ -S "$sock" ] && [ "$(children "$SERVER_PID" | wc -l)" -ge "$WORKERS" ]; then return 0; fi
    sleep 0.1
  done
  cat "$run/$system-$2.log" >&2
  die "$system did not come up on $sock with $WORKERS workers"
}
stop_server() {
  [ -n "$SERVER_PID" ] || return 0
  local pids i
  pids=$(tree_pids "$SERVER_PID")
  # uWSGI's master reloads on TERM; INT stops it.
  kill "-$STOP_SIGNAL" "$SERVER_PID" 2>/dev/null || true
  for i in $(seq 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
  # Anything left of the tree (master and the workers seen before the TERM).
  # shellcheck disable=SC2086
  kill -KILL $pids 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=
}

start_haproxy() { # socket multiplex: HAProxy (one thread) as the front
  # (FRONT=haproxy); for ours `option mpxs-conns` + `http-reuse always`
  # (multiplexed connections), for the others HAProxy's defaults (uWSGI and
  # flup answer no FCGI_GET_VALUES). Its pid stands in for nginx's in the
  # accounting.
  local mpx="    option keep-conn"
  [ "$2" = yes ] && mpx="    option keep-conn
    option mpxs-conns
    option max-reqs 10
    option get-values"
  local reuse=
  [ "$2" = yes ] && reuse="    http-reuse always"
  cat > "$run/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend web
    bind 127.0.0.1:$NGINX_PORT
    default_backend app
fcgi-app wsgi
    docroot /srv
    path-info ^()(/.*)\$
$mpx
backend app
    use-fcgi-app wsgi
$reuse
    server app unix@$1 proto fcgi
EOF
  local i
  FRONT_STOP_SIGNAL=TERM
  haproxy -db -f "$run/haproxy.cfg" >>"$run/nginx-error.log" 2>&1 &
  NGINX_PID=$!
  NGINX_WORKER=$NGINX_PID
  for i in $(seq 50); do
    curl -s -m 2 -o /dev/null "http://127.0.0.1:$NGINX_PORT/" && return 0
    kill -0 "$NGINX_PID" 2>/dev/null || break
    sleep 0.1
  done
  cat "$run/nginx-error.log" >&2
  die "haproxy did not come up"
}

start_nginx() { # mode socket
  local pass
  if [ "$FRONT" = haproxy ]; then
    case $1 in
      fastcgi-keepalive) start_haproxy "$2" yes; return ;;
      fastcgi*) start_haproxy "$2" no; return ;;
      *) die "FRONT=haproxy: $1 is not a FastCGI server" ;;
    esac
  fi
  case $1 in
    fastcgi-keepalive|fastcgi)
      local keepalive="keepalive $((CONNECTIONS * 2));" keep_conn=on
      [ "$1" = fastcgi ] && { keepalive=; keep_conn=off; }
      pass="
      fastcgi_pass app;
      fastcgi_keep_conn $keep_conn;
      include /etc/nginx/fastcgi_params;
      fastcgi_param SCRIPT_NAME \"\";
      fastcgi_param PATH_INFO \$uri;"
      ;;
    http-keepalive)
      local keepalive="keepalive $((CONNECTIONS * 2));"
      pass="
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_set_header Host \$host;"
      ;;
  esac
  write_nginx_conf "$2" "$keepalive" "$pass"
  cp "$run/nginx.conf" "$run/nginx-$1.conf"
  launch_nginx
}
trap cleanup EXIT
trap 'exit 130' INT TERM

check_nginx() { # system workload
  local code
  code=$(curl -s -o "$run/nginx-body" -w '%{http_code}' "http://127.0.0.1:$NGINX_PORT/") || true
  [ "$code" = 200 ] || { cat "$run/$1-$2.log" >&2; die "$1/$2: HTTP $code through nginx"; }
  { if [ "$1" = ours-nopython ]; then echo pong; else expected_body "$2"; fi; } | cmp -s - "$run/nginx-body" \
    || die "$1/$2: wrong body through nginx: $(head -c 200 "$run/nginx-body")"
}

# --- measurement -----------------------------------------------------------------
measure() { # system workload
  local url=http://127.0.0.1:$NGINX_PORT/ t0 t1 m0 m1 s0 s1 n0 n1 gen pid
  local workers rss=0 pss=0 pss_ok=1 nwk=0 master_rss
  wrk -t1 -c"$CONNECTIONS" -d"${WARMUP}s" "$url" >/dev/null
  # Per-worker CPU too: how evenly the load spreads over the workers.
  local -A wk0=()
  for pid in $(children "$SERVER_PID"); do wk0[$pid]=$(proc_cpu_ticks "$pid"); done
  local perf_pid=
  if [ "${PERF:-0}" = 1 ]; then
    perf record -q -e cpu-clock -F 999 -o "$run/perf-$1-$2.data" \
      -p "$(children "$SERVER_PID" | paste -sd,)" -- sleep "$DURATION" >/dev/null 2>&1 &
    perf_pid=$!
  fi
  local count_pid=
  rm -f "$run/count-$1-$2.csv"
  if [ "${COUNT:-0}" = 1 ]; then
    perf stat -x, -e raw_syscalls:sys_enter,context-switches,page-faults,cpu-migrations \
      -o "$run/count-$1-$2.csv" -p "$(children "$SERVER_PID" | paste -sd,)" -- sleep "$DURATION" >/dev/null 2>&1 &
    count_pid=$!
  fi
  t0=$(now_s); m0=$(machine_busy_ticks); s0=$(tree_cpu_ticks "$SERVER_PID"); n0=$(proc_cpu_ticks "$NGINX_WORKER")
  /usr/bin/time -f '%U %S' -o "$run/wrk.time" \
    wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency "$url" > "$run/wrk.txt"
  if [ -n "$perf_pid" ]; then
    wait "$perf_pid" || true
    perf report -q -i "$run/perf-$1-$2.data" --sort dso --stdio 2>/dev/null > "$run/perf-$1-$2.txt" || true
  fi
  [ -z "$count_pid" ] || wait "$count_pid" || true
  t1=$(now_s); m1=$(machine_busy_ticks); s1=$(tree_cpu_ticks "$SERVER_PID"); n1=$(proc_cpu_ticks "$NGINX_WORKER")
  local wk_ticks=
  for pid in "${!wk0[@]}"; do wk_ticks="$wk_ticks $(( $(proc_cpu_ticks "$pid") - wk0[$pid] ))"; done
  cp "$run/wrk.txt" "$run/wrk-$1-$2.txt"
  gen=$(awk '{print $1 + $2}' "$run/wrk.time")
  # Memory right after the measurement, the workers still up.
  workers=$(children "$SERVER_PID")
  for pid in $workers; do
    local r p
    r=$(status_kib "$pid" VmRSS); p=$(pss_kib "$pid")
    [ -n "$r" ] || continue
    nwk=$((nwk + 1)); rss=$((rss + r))
    if [ -n "$p" ]; then pss=$((pss + p)); else pss_ok=0; fi
  done
  [ "$pss_ok" = 1 ] || pss=-1
  master_rss=$(status_kib "$SERVER_PID" VmRSS)
  # (ours: the master and its template, which holds the app.)
  for pid in $(templates "$SERVER_PID"); do master_rss=$((master_rss + $(status_kib "$pid" VmRSS))); done
  "$PY" - "$run/wrk.txt" "$1" "$2" "$t0" "$t1" "$m0" "$m1" "$s0" "$s1" "$n0" "$n1" "$TICK" "$gen" \
    "$nwk" "$rss" "$pss" "${master_rss:-0}" "$WORKERS" "$wk_ticks" "$run/perf-$1-$2.txt" "$run/count-$1-$2.csv" >> "$results" <<'EOF'
import json, os, re, sys
text = open(sys.argv[1]).read()
system, workload = sys.argv[2], sys.argv[3]
t0, t1, m0, m1, s0, s1, n0, n1, tick, gen = map(float, sys.argv[4:14])
nwk, rss, pss, master_rss, n = map(int, sys.argv[14:19])
wk_ticks = [int(x) for x in sys.argv[19].split()]
# PERF=1: the workers' samples by shared object, as fractions.
shares = None
if os.path.exists(sys.argv[20]):
    shares = {}
    for line in open(sys.argv[20]):
        m = re.match(r"\s*([\d.]+)%\s+(\S+)", line)
        if m:
            dso, pct = m.group(2), float(m.group(1)) / 100
            kind = ("python" if dso.startswith("libpython") else "kernel" if dso == "[kernel.kallsyms]"
                    else "libc" if dso.startswith("libc.so") else "own" if dso in ("wsgi-fcgi", "uwsgi", "python3", "python")
                    else "other")
            shares[kind] = shares.get(kind, 0) + pct
# COUNT=1: the workers' software counters over the window (perf stat -x,).
counts = None
if os.path.exists(sys.argv[21]):
    counts = {}
    for line in open(sys.argv[21]):
        f = line.strip().split(",")
        if len(f) > 2 and f[0].isdigit():
            counts[f[2].replace("raw_syscalls:sys_enter", "syscalls")] = int(f[0])
def us(v):
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", v)
    return float(m.group(1)) * {"us": 1, "ms": 1e3, "s": 1e6}[m.group(2)]
pct = {p: us(v) for p, v in re.findall(r"^\s+(50|90|99)%\s+(\S+)", text, re.M)}
done = int(re.search(r"(\d+) requests in", text).group(1))
non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
errors = (int(non2xx.group(1)) if non2xx else 0) + (sum(map(int, sock.groups())) if sock else 0)
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
wall = t1 - t0
server, nginx, machine = (s1 - s0) / tick, (n1 - n0) / tick, (m1 - m0) / tick
print(json.dumps(dict(
    system=system, workload=workload, requests=done, errors=errors, rps=rps,
    p50_us=pct.get("50"), p90_us=pct.get("90"), p99_us=pct.get("99"),
    wall_s=wall, server_cpu_s=server, nginx_cpu_s=nginx, gen_cpu_s=gen,
    other_cores=max(0.0, machine - server - nginx - gen) / wall,
    workers_found=nwk, rss_per_worker_kib=rss / n, pss_per_worker_kib=(pss / n if pss >= 0 else None),
    master_rss_kib=master_rss,
    busiest_worker_share=(max(wk_ticks) / sum(wk_ticks) if wk_ticks and sum(wk_ticks) > 0 else None),
    perf_shares=shares, counts=counts)))
EOF
}

commit=$(bench_commit)
for workload in $WORKLOADS; do
  workload_ok "$workload"
  for system in $SYSTEMS; do
    [ "$system" = ours-nopython ] && [ "$workload" != hello ] && continue
    sock=$run/$system.sock
    log "$workload: $system ($(server_cmd "$system" "$workload" "$sock" | tr '\n' ' '))"
    start_server "$system" "$workload" "$sock"
    start_nginx "$(nginx_mode "$system")" "$sock"
    check_nginx "$system" "$workload"
    measure "$system" "$workload"
    stop_nginx
    stop_server
  done
done

# Flask's own cost per request, in process (a prepared environ, the same
# route, no server): CPU per request minus this is a server's overhead.
flask_us=
case " $WORKLOADS " in
  *" flask "*)
    flask_us=$(cd tests/apps && "$PY" - <<'EOF'
import io, sys, time
sys.path.insert(0, ".")
from flask_app import app
minimal = {
    "REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": "/", "QUERY_STRING": "",
    "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "18089", "SERVER_PROTOCOL": "HTTP/1.1",
    "HTTP_HOST": "127.0.0.1:18089", "HTTP_USER_AGENT": "wrk", "REMOTE_ADDR": "127.0.0.1",
    "wsgi.version": (1, 0), "wsgi.url_scheme": "http", "wsgi.errors": sys.stderr,
    "wsgi.multithread": False, "wsgi.multiprocess": True, "wsgi.run_once": False,
}
# What the app gets through nginx here: Debian's fastcgi_params (empty
# values are not passed on), the script's SCRIPT_NAME/PATH_INFO, wrk's
# one header.
nginx = dict(minimal, **{
    "REQUEST_URI": "/", "DOCUMENT_URI": "/", "DOCUMENT_ROOT": "/usr/share/nginx/html",
    "REQUEST_SCHEME": "http", "GATEWAY_INTERFACE": "CGI/1.1", "SERVER_SOFTWARE": "nginx/1.22.1",
    "REMOTE_PORT": "41234", "SERVER_ADDR": "127.0.0.1", "REDIRECT_STATUS": "200",
})
del nginx["HTTP_USER_AGENT"]
def per_request(environ):
    def call():
        env = dict(environ, **{"wsgi.input": io.BytesIO(b"")})
        body = app(env, lambda status, headers, exc_info=None: None)
        b"".join(body)
        getattr(body, "close", lambda: None)()
    for _ in range(2000):
        call()
    best = None
    for _ in range(5):
        start = time.process_time()
        for _ in range(2000):
            call()
        per = (time.process_time() - start) / 2000 * 1e6
        best = per if best is None else min(best, per)
    return best
print(f"{per_request(nginx):.1f} {per_request(minimal):.1f}")
EOF
    ) ;;
esac

# --- report ------------------------------------------------------------------------
echo
echo "wsgi-fcgi multi-process benchmark (commit $commit): WORKERS=$WORKERS THREADS=$THREADS" \
  "DURATION=${DURATION}s WARMUP=${WARMUP}s CONNECTIONS=$CONNECTIONS"
echo "$(nproc) CPUs, $("$PY" -VV | head -1); nginx $(nginx -v 2>&1 | sed 's/.*\///'), worker_processes 1," \
  "wrk -t1 -c$CONNECTIONS; uWSGI $("$VENV/bin/uwsgi" --version), gunicorn $("$VENV/bin/gunicorn" --version 2>&1 | awk '{print $NF}' | tr -d ')'), flup $("$PY" -c 'import importlib.metadata as m; print(m.version("flup"))')"
echo "commands (SOCK, APP per workload):"
for system in $SYSTEMS; do
  printf '  %-16s %s  [nginx: %s]\n' "$system" \
    "$(server_cmd "$system" hello SOCK | tr '\n' ' ' | sed "s|$BIN|target/release/wsgi-fcgi|; s|$root/||g; s|tests/apps/hello.py|APP|; s|hello:application|APPMODULE|")" \
    "$(nginx_mode "$system")"
done
"$PY" - "$results" "$WORKERS" "$flask_us" "$FRONT" <<'EOF'
import json, sys
front = sys.argv[4]

runs = [json.loads(line) for line in open(sys.argv[1])]
n = int(sys.argv[2])
# Flask in process: with the environ nginx sends, and with a minimal one.
flask_us, flask_minimal_us = (map(float, sys.argv[3].split()) if sys.argv[3] else (None, None))
by = {}
for r in runs:
    by.setdefault(r["workload"], {})[r["system"]] = r
mib = lambda kib: f"{kib / 1024:.1f}" if kib is not None else "-"
ms = lambda v: f"{v / 1000:.2f}" if v is not None else "-"
share = lambda v: f"{v * 100:.0f}%" if v is not None else "-"
bad = []
for workload, systems in by.items():
    print(f"\n{workload}: {n} workers each")
    print(f"  {'system':<16} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'err':>4} {'srv cores':>9}"
          f" {'cpu us/req':>10} {'other':>5} {'wk':>3} {'top wk':>6} {'rss/wk MiB':>10} {'pss/wk MiB':>10} {'master MiB':>10}")
    for system, r in systems.items():
        cpu_req = r["server_cpu_s"] / r["requests"] * 1e6 if r["requests"] else float("nan")
        print(f"  {system:<16} {r['rps']:>7.0f} {ms(r['p50_us']):>7} {ms(r['p99_us']):>7} {r['errors']:>4}"
              f" {r['server_cpu_s'] / r['wall_s']:>9.2f} {cpu_req:>10.1f} {r['other_cores']:>5.2f}"
              f" {r['workers_found']:>3} {share(r.get('busiest_worker_share')):>6} {mib(r['rss_per_worker_kib']):>10} {mib(r['pss_per_worker_kib']):>10}"
              f" {mib(r['master_rss_kib']):>10}")
        if r["errors"] and front == "haproxy" and system != "ours":
            print(f"    ({system}: {r['errors']} failed requests behind HAProxy, which reuses the"
                  f" connections it asked to keep (FCGI_KEEP_CONN) while {system} closes them)")
        elif r["errors"] or r["workers_found"] != n:
            bad.append(f"{workload}/{system}: {r['errors']} errors, {r['workers_found']} workers found")
    ours = systems.get("ours")
    if ours:
        print(f"  ratios ours/other: req/s (>1 ours faster); p50, p99, cpu/req, rss/wk, pss/wk (<1 ours lower)")
        for system, o in systems.items():
            if system == "ours":
                continue
            def ratio(key):
                a, b = ours.get(key), o.get(key)
                return f"{a / b:.2f}" if a is not None and b else "-"
            cpu = lambda r: r["server_cpu_s"] / r["requests"] if r["requests"] else None
            c = f"{cpu(ours) / cpu(o):.2f}" if cpu(ours) and cpu(o) else "-"
            print(f"    vs {system:<16} req/s {ratio('rps'):>5}x  p50 {ratio('p50_us'):>5}  p99 {ratio('p99_us'):>5}"
                  f"  cpu/req {c:>5}  rss/wk {ratio('rss_per_worker_kib'):>5}  pss/wk {ratio('pss_per_worker_kib'):>5}")
    for system, r in systems.items():
        sh = r.get("perf_shares")
        if sh:
            print(f"  perf, {system}: " + ", ".join(f"{k} {sh.get(k, 0) * 100:.1f}%" for k in ("python", "kernel", "own", "libc", "other")))
    for system, r in systems.items():
        c = r.get("counts")
        if c and r["requests"]:
            print(f"  per request, {system}: " + ", ".join(f"{k} {v / r['requests']:.2f}" for k, v in c.items()))
    if workload == "flask" and flask_us:
        floor = {}
        for s, r in systems.items():
            sh = r.get("perf_shares")
            if sh and r["requests"]:
                cpu_us = r["server_cpu_s"] / r["requests"] * 1e6
                floor[s] = (cpu_us * sh.get("python", 0) - flask_us, cpu_us * sh.get("kernel", 0))
        for s, (colder, kernel) in floor.items():
            print(f"  overhead floor, {s}: interpreter beyond Flask's in-process cost {colder:.1f} us + kernel {kernel:.1f} us"
                  f" = {colder + kernel:.1f} us per request, with the server's own code and libc free")
        for label, own in (("the environ nginx sends", flask_us), ("a minimal environ", flask_minimal_us)):
            over = {s: r["server_cpu_s"] / r["requests"] * 1e6 - own for s, r in systems.items() if r["requests"]}
            print(f"  Flask in process with {label}: {own:.1f} us/req; server overhead (cpu/req minus that): "
                  + ", ".join(f"{s} {v:.1f} us" for s, v in over.items()))
            if "ours" in over:
                for s, v in over.items():
                    if s != "ours" and v > 0:
                        print(f"    overhead ours/{s}: {over['ours'] / v:.2f}"
                              + (f" (floor: {sum(floor['ours']) / v:.2f})" if label.startswith("the environ") and "ours" in floor else ""))
if bad:
    print("\nNOT SANE:")
    for b in bad:
        print("  " + b)
    sys.exit(1)
EOF

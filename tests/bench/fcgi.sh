#!/usr/bin/env bash
# FastCGI responder benchmark: target/release/wsgi-fcgi ("ours") against
# uWSGI (--fastcgi-socket) and flup (flup.server.fcgi.WSGIServer), all three
# in ONE process with the same number of app threads, on unix sockets, with
# the same interpreter (the CPython wsgi-fcgi is linked against; uWSGI is
# pip-built against it in the bench venv) and the same virtualenv
# (target/bench-venv: flask, flup, uwsgi).
#
# Workloads (apps):
#   hello     tests/apps/hello.py          14-byte body: the gateway's own cost
#   flask     tests/apps/flask_app.py  /   "Hello from Flask\n": a framework's cost dominates
#   stream10  tests/bench/apps/stream10.py 10 MiB yielded as 160 x 64 KiB: moving a body
#
# Paths:
#   direct  tests/bench/loadgen (fcgi-loadgen, a single-threaded closed-loop
#           FastCGI client): CONNECTIONS connections, each one request at a
#           time with FCGI_KEEP_CONN, reused while the server keeps them open.
#           uWSGI closes every connection after END_REQUEST whatever
#           FCGI_KEEP_CONN says, so against it each request pays a connect
#           (the `conn/req` column shows it: 1.00 = a connection per request).
#           The extra row "ours conn/req" runs ours with FCGI_KEEP_CONN clear
#           (a connection per request, as uWSGI is measured) for an
#           apples-to-apples view of that cost.
#   nginx   wrk -t1 -cCONNECTIONS over loopback TCP to one nginx worker
#           (worker_processes 1) that passes to the server with an upstream
#           keepalive pool and fastcgi_keep_conn on (against uWSGI nginx
#           reconnects per request, as it must).
#
# Each server is started fresh per workload and warmed up (WARMUP seconds of
# the same load, not counted) before each measurement; every contender must
# first answer 200 with the exact expected body (sha256), directly and
# through nginx, or the script stops. All contenders run back to back under
# the same settings, interleaved per workload.
#
# How to read it: one table per (threads, workload, path). req/s is
# completed requests per second of the measured DURATION; p50/p99 are
# per-request latencies (direct: from the generator, including any connect;
# nginx: wrk's); MiB/s is response bytes per second; srv cores and
# cpu us/req are the server process's CPU (all threads) over the window and
# per request -- the generator, nginx and the server share 2 cores, so a
# server that burns less CPU per request leaves more to the others;
# `other` is CPU used by anything else on the machine during the window
# (other jobs: noise -- distrust a row where it is high); rss is the
# server's peak resident set (VmHWM) read right after that measurement
# (rows of one server are measured in order: direct, conn/req, nginx);
# err counts failed or wrong answers (must be 0). Ratios: req/s of ours
# over the other's (> 1: ours is faster), with the targets beside them.
# Run-to-run noise on this box is large (+-30% when other jobs run):
# ROUNDS=3 reruns everything and reports the best round with the range.
# Raw results: target/bench/fcgi-results.jsonl; logs in target/bench/run/.
# Helpers shared with tests/bench/workers.sh: tests/bench/lib.sh.
#
# Usage: tests/bench/fcgi.sh
# Env knobs (whole seconds, wrk takes no fractions): DURATION=5 (measured)
#   WARMUP=1 (not counted) CONNECTIONS=16
#   THREADS="1 4" (app threads; a list runs each) WORKLOADS="hello flask stream10"
#   PATHS="direct nginx" SYSTEMS="ours uwsgi flup" (also: ours-mimalloc = ours with
#   LD_PRELOAD=libmimalloc: the experiment that led wsgi-fcgi to link mimalloc itself) ROUNDS=1 (repeat everything, report
#   the best round and the min-max range) NGINX_PORT=18089 PYO3_PYTHON
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
CONNECTIONS=${CONNECTIONS:-16}
THREADS=${THREADS:-"1 4"}
WORKLOADS=${WORKLOADS:-"hello flask stream10"}
PATHS=${PATHS:-"direct nginx"}
SYSTEMS=${SYSTEMS:-"ours uwsgi flup"}
ROUNDS=${ROUNDS:-1}
NGINX_PORT=${NGINX_PORT:-18089}

bench=fcgi.sh
# die, log, app_file, expected_body, CPU accounting, nginx start/stop, cleanup.
. "$root/tests/bench/lib.sh"
need_tools wrk nginx curl sha256sum

# --- build: ours, the load generator, the bench venv -------------------------
default_pyo3_python
cargo build --release --bins >&2
CARGO_TARGET_DIR=$root/target/bench/loadgen-target \
  cargo build --release --manifest-path tests/bench/loadgen/Cargo.toml >&2
# A private copy: a concurrent `cargo build` cannot swap the binary mid-run.
mkdir -p "$root/target/bench/run"
cp "$root/target/release/wsgi-fcgi" "$root/target/bench/run/wsgi-fcgi"
BIN=$root/target/bench/run/wsgi-fcgi
LOADGEN=$root/target/bench/loadgen-target/release/fcgi-loadgen

ensure_bench_venv
PY=$VENV/bin/python
# uWSGI must embed the same libpython as ours (a different build would not be a fair fight).
same_libpython_or_die "$BIN" "$VENV/bin/uwsgi"

run=$root/target/bench/run
out=$root/target/bench
results=$out/fcgi-results.jsonl
mkdir -p "$run"
: > "$results"

# --- servers -----------------------------------------------------------------
SERVER_PID=
start_server() { # system app threads socket
  local system=$1 app=$2 threads=$3 sock=$4
  rm -f "$sock"
  case $system in
    ours|ours-mimalloc)
      local preload=
      if [ "$system" = ours-mimalloc ]; then
        preload=$(ls /usr/lib/*/libmimalloc.so.2 2>/dev/null | head -1)
        [ -n "$preload" ] || die "ours-mimalloc needs libmimalloc.so.2 (apt-get install libmimalloc2.0)"
      fi
      env ${preload:+LD_PRELOAD=$preload} "$BIN" --app "$app" --bind "unix:$sock" --threads "$threads" --venv "$VENV" \
        --socket-mode 666 >"$run/$system.log" 2>&1 &
      ;;
    uwsgi)
      # No master (the default): one process that is the worker.
      "$VENV/bin/uwsgi" --fastcgi-socket "$sock" --chmod-socket=666 --wsgi-file "$app" \
        --home "$VENV" --processes 1 --threads "$threads" --disable-logging \
        >"$run/$system.log" 2>&1 &
      ;;
    flup)
      "$PY" tests/bench/flup_server.py "$app" "$sock" "$threads" $((CONNECTIONS * 2 + 8)) \
        >"$run/$system.log" 2>&1 &
      ;;
  esac
  SERVER_PID=$!
  local i
  for i in $(seq 100); do
    if [ -S "$sock" ] && "$LOADGEN" --connect "unix:$sock" --once >/dev/null 2>&1; then return 0; fi
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.1
  done
  cat "$run/$system.log" >&2
  die "$system did not come up on $sock"
}
stop_server() {
  [ -n "$SERVER_PID" ] || return 0
  kill -TERM "$SERVER_PID" 2>/dev/null || true
  local i
  for i in $(seq 30); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=
}
peak_rss_kib() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }

start_nginx() { # socket
  write_nginx_conf "$1" "keepalive $((CONNECTIONS * 2));" "
      fastcgi_pass app;
      fastcgi_keep_conn on;
      # Big responses stay in memory (no temp files on disk).
      fastcgi_buffers 16 64k;
      fastcgi_max_temp_file_size 0;
      include /etc/nginx/fastcgi_params;
      fastcgi_param SCRIPT_NAME \"\";
      fastcgi_param PATH_INFO \$uri;"
  launch_nginx
}
trap cleanup EXIT

# --- sanity: 200 and the exact body --------------------------------------------
check_direct() { # system workload socket
  local got
  got=$("$LOADGEN" --connect "unix:$3" --once | "$PY" -c '
import sys
data = sys.stdin.buffer.read()
head, sep, body = data.partition(b"\r\n\r\n")
sys.stdout.buffer.write(body if sep else b"<no header block>")' | sha256sum) || die "$1/$2: direct request failed"
  [ "$got" = "$want_sha" ] || die "$1/$2: wrong body directly (sha256 $got, want $want_sha)"
}
check_nginx() { # system workload
  local code got
  code=$(curl -s -o "$run/nginx-body" -w '%{http_code}' "http://127.0.0.1:$NGINX_PORT/")
  [ "$code" = 200 ] || die "$1/$2: HTTP $code through nginx"
  got=$(sha256sum < "$run/nginx-body")
  [ "$got" = "$want_sha" ] || die "$1/$2: wrong body through nginx"
}

# --- measurements --------------------------------------------------------------
# CPU accounting around each measured window (not the warm-up): the server's
# CPU (all its threads), the generator's, nginx's worker, and the whole
# machine's busy time, so that `other` = CPU used by anything else on the box
# during the window (noise from other jobs) can be reported.
# (proc_cpu_ticks, machine_busy_ticks, now_s and TICK are in lib.sh.)
record() { # threads workload path system json(generator) extra-json
  "$PY" -c '
import json, sys
d = json.loads(sys.argv[5]); d.update(json.loads(sys.argv[6]))
d.update(threads=int(sys.argv[1]), workload=sys.argv[2], path=sys.argv[3], system=sys.argv[4])
print(json.dumps(d))' "$@" >> "$results"
}
# window_begin/window_end: around one measured run; extra pids (nginx worker) in $2..
window_begin() {
  W_T0=$(now_s); W_M0=$(machine_busy_ticks); W_S0=$(proc_cpu_ticks "$SERVER_PID")
  W_N0=0; [ -n "${NGINX_WORKER:-}" ] && W_N0=$(proc_cpu_ticks "$NGINX_WORKER")
  return 0
}
window_end() { # generator_cpu_seconds -> json with cpu figures and rss
  local t1 m1 s1 n1=0
  t1=$(now_s); m1=$(machine_busy_ticks); s1=$(proc_cpu_ticks "$SERVER_PID")
  [ -n "${NGINX_WORKER:-}" ] && n1=$(proc_cpu_ticks "$NGINX_WORKER")
  "$PY" -c '
import json, sys
t0, t1, m0, m1, s0, s1, n0, n1, tick, gen, rss = map(float, sys.argv[1:])
wall = t1 - t0
server, nginx, machine = (s1 - s0) / tick, (n1 - n0) / tick, (m1 - m0) / tick
print(json.dumps(dict(wall_s=wall, server_cpu_s=server, nginx_cpu_s=nginx, window_gen_cpu_s=gen,
                      other_cores=max(0.0, machine - server - nginx - gen) / wall, rss_kib=rss)))' \
    "$W_T0" "$t1" "$W_M0" "$m1" "$W_S0" "$s1" "$W_N0" "$n1" "$TICK" "$1" "$(peak_rss_kib "$SERVER_PID")"
}

measure_direct() { # threads workload system socket keep_conn label
  local expect_len json extra gen
  expect_len=$(expected_body "$2" | wc -c)
  # Warm-up: same load, not counted.
  "$LOADGEN" --connect "unix:$4" --connections "$CONNECTIONS" --keep-conn "$5" \
    --warmup 0 --duration "$WARMUP" --expect-len "$expect_len" > /dev/null
  window_begin
  json=$("$LOADGEN" --connect "unix:$4" --connections "$CONNECTIONS" --keep-conn "$5" \
    --warmup 0 --duration "$DURATION" --expect-len "$expect_len")
  gen=$("$PY" -c 'import json,sys; print(json.loads(sys.argv[1])["gen_cpu_s"])' "$json")
  extra=$(window_end "$gen")
  record "$1" "$2" direct "$6" "$json" "$extra"
}
measure_nginx() { # threads workload system
  local url=http://127.0.0.1:$NGINX_PORT/ json extra gen
  wrk -t1 -c"$CONNECTIONS" -d"${WARMUP}s" "$url" >/dev/null
  window_begin
  /usr/bin/time -f '%U %S' -o "$run/wrk.time" \
    wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency "$url" > "$run/wrk.txt"
  gen=$(awk '{print $1 + $2}' "$run/wrk.time")
  extra=$(window_end "$gen")
  json=$("$PY" - "$run/wrk.txt" <<'EOF'
import json, re, sys
text = open(sys.argv[1]).read()
def us(v):
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", v)
    return float(m.group(1)) * {"us": 1, "ms": 1e3, "s": 1e6}[m.group(2)]
pct = {p: us(v) for p, v in re.findall(r"^\s+(50|90|99)%\s+(\S+)", text, re.M)}
done = int(re.search(r"(\d+) requests in", text).group(1))
non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
errors = (int(non2xx.group(1)) if non2xx else 0) + (sum(map(int, sock.groups())) if sock else 0)
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
tr = re.search(r"Transfer/sec:\s+([\d.]+)(B|KB|MB|GB)", text)
mbps = float(tr.group(1)) * {"B": 1 / 2**20, "KB": 1 / 2**10, "MB": 1, "GB": 2**10}[tr.group(2)]
print(json.dumps(dict(requests=done, errors=errors, rps=rps, mbps=mbps, p50_us=pct.get("50"),
                      p90_us=pct.get("90"), p99_us=pct.get("99"))))
EOF
)
  record "$1" "$2" nginx "$3" "$json" "$extra"
}

commit=$(bench_commit)
for round in $(seq "$ROUNDS"); do
  for threads in $THREADS; do
    for workload in $WORKLOADS; do
      app=$(app_file "$workload")
      want_sha=$(expected_body "$workload" | sha256sum)
      for system in $SYSTEMS; do
        sock=$run/$system.sock
        log "round $round/$ROUNDS threads=$threads $workload: $system"
        start_server "$system" "$app" "$threads" "$sock"
        check_direct "$system" "$workload" "$sock"
        for path in $PATHS; do
          case $path in
            direct)
              measure_direct "$threads" "$workload" "$system" "$sock" 1 "$system"
              if [ "$system" = ours ]; then
                measure_direct "$threads" "$workload" "$system" "$sock" 0 "ours conn/req"
              fi
              ;;
            nginx)
              start_nginx "$sock"
              check_nginx "$system" "$workload"
              measure_nginx "$threads" "$workload" "$system"
              stop_nginx
              ;;
          esac
        done
        stop_server
      done
    done
  done
done

# --- report --------------------------------------------------------------------
echo
echo "wsgi-fcgi FastCGI benchmark (commit $commit): DURATION=${DURATION}s WARMUP=${WARMUP}s"
echo "CONNECTIONS=$CONNECTIONS ROUNDS=$ROUNDS, 1 server process, $(nproc) CPUs, $("$PY" -VV | head -1)"
echo "ours:  wsgi-fcgi --app APP --bind unix:SOCK --threads T --venv target/bench-venv"
echo "uWSGI: uwsgi $("$VENV/bin/uwsgi" --version) --fastcgi-socket SOCK --wsgi-file APP --processes 1 --threads T --disable-logging"
echo "flup:  flup 1.0.3 WSGIServer (tests/bench/flup_server.py; thread per connection, multithreaded=T>1)"
echo "direct: fcgi-loadgen $CONNECTIONS conns; nginx: $(nginx -v 2>&1 | sed 's/.*\///'), worker_processes 1, wrk -t1 -c$CONNECTIONS"
"$PY" - "$results" <<'EOF'
import json, statistics, sys

runs = [json.loads(line) for line in open(sys.argv[1])]
targets = {  # (workload, path, other) -> minimum ours/other req/s ratio
    ("hello", "direct", "uwsgi"): 1.5,
    ("hello", "direct", "flup"): 10.0,
    ("hello", "nginx", "uwsgi"): 1.0,
    ("flask", "nginx", "uwsgi"): 1.0,
    ("stream10", "nginx", "uwsgi"): 1.0,
    ("stream10", "direct", "uwsgi"): 1.0,
}
groups = {}
for r in runs:
    groups.setdefault((r["threads"], r["workload"], r["path"]), {}).setdefault(r["system"], []).append(r)
print("\ncolumns: req/s (best of ROUNDS: noise only ever slows a run down; [min-max] of all rounds),")
print("latency p50/p99 ms, MiB/s of response,")
print("conn/req (connections opened per request; direct only), srv cores (server CPU / wall),")
print("cpu us/req (server CPU per request: less noise-prone than req/s), other (cores used by")
print("anything else on the box in the window: noise), rss MiB (server VmHWM after this measurement)")
verdicts = []
for (threads, workload, path), systems in groups.items():
    print(f"\n{workload} via {path}, threads={threads}")
    print(f"  {'system':<14} {'req/s':>8} {'range':>13} {'p50':>6} {'p99':>6} {'MiB/s':>7} {'conn/req':>8}"
          f" {'srv cores':>9} {'cpu us/req':>10} {'other':>5} {'err':>4} {'rss MiB':>7}")
    med = {}
    for system, rs in systems.items():
        rs = sorted(rs, key=lambda r: r["rps"])
        r = rs[-1]
        med[system] = r
        rng = f"[{rs[0]['rps']:.0f}-{rs[-1]['rps']:.0f}]" if len(rs) > 1 else ""
        conn = f"{r['connects'] / r['requests']:.2f}" if r.get("connects") is not None and r["requests"] else "-"
        p50 = f"{r['p50_us'] / 1000:.2f}" if r.get("p50_us") is not None else "-"
        p99 = f"{r['p99_us'] / 1000:.2f}" if r.get("p99_us") is not None else "-"
        cores = r["server_cpu_s"] / r["wall_s"]
        cpu_req = r["server_cpu_s"] / r["requests"] * 1e6 if r["requests"] else float("nan")
        errors = sum(x["errors"] for x in rs)
        print(f"  {system:<14} {r['rps']:>8.0f} {rng:>13} {p50:>6} {p99:>6} {r['mbps']:>7.1f} {conn:>8}"
              f" {cores:>9.2f} {cpu_req:>10.1f} {r['other_cores']:>5.2f} {errors:>4} {r['rss_kib'] / 1024:>7.1f}")
        for x in rs:
            if x.get("first_error"):
                print(f"    first error: {x['first_error']}")
    ours = med.get("ours")
    for other in ("uwsgi", "flup"):
        if ours and other in med and med[other]["rps"] > 0:
            ratio = ours["rps"] / med[other]["rps"]
            o, t = med[other], ours
            cpu_ratio = (o["server_cpu_s"] / o["requests"]) / (t["server_cpu_s"] / t["requests"])
            target = targets.get((workload, path, other))
            note = ""
            if target is not None:
                ok = ratio >= target
                note = f"   target >= {target:g}: {'MET' if ok else 'NOT met'}"
                verdicts.append((f"{workload} {path} T={threads} vs {other}", ratio, target, ok))
            print(f"  ours/{other}: {ratio:.2f}x req/s; server CPU per request ours/{other}: {1 / cpu_ratio:.2f}{note}")
if verdicts:
    print("\nTargets (req/s ratio ours/other):")
    for name, ratio, target, ok in verdicts:
        print(f"  {name:<30} {ratio:>6.2f}x  (>= {target:g})  {'MET' if ok else 'NOT met'}")
EOF

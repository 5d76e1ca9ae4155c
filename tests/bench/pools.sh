#!/usr/bin/env bash
# Many sites on one box: POOLS (default 50) pools of one Flask app
# (tests/apps/flask_app.py, target/bench-venv), idle, and the memory the
# whole process tree takes (PSS, /proc/PID/smaps_rollup: shared pages split
# among their sharers), side by side with uWSGI's Emperor in one run; then
# what a request to an idle pool costs, and a dynamic pool under a load step.
#
# Rows (SYSTEMS, in this order):
#   ours-static        one wsgi-fcgi master, POOLS [pool.N] tables, `workers = 1`
#                      (no template: one worker shares with nobody)
#   ours-ondemand      the same with `pm = "ondemand"` (no worker until a request)
#   ours-ondemand-hit  ours-ondemand after one request to every pool (before
#                      their idle timeout): what visited pools cost
#   ours-pools-preload one master, POOLS pools `pm = "ondemand"` with
#                      `preload = true`: each pool's app imported once by its
#                      template process, workers forked from it on demand
#   ours-preload       POOLS single-app masters `--pm ondemand --preload` (the
#                      app imported by each master's template, forked on demand)
#   uwsgi-emperor      uwsgi --emperor with POOLS vassals, each `--master
#                      --processes 1` (uWSGI's default: app imported in the
#                      master, the worker forked from it)
#   uwsgi-cheap        the same vassals with `cheap = true` (no worker until
#                      the first request)
# Columns: processes in the tree; PSS MiB; PSS per pool; ratio to ours-static
# (target for ours-ondemand: <= 0.10).
#
# First request to an idle pool (median and max over FIRST pools, ms, from
# connect to END_REQUEST, one `fcgi-loadgen --once` each): ours-ondemand
# (a worker starts Python and imports the app: the app's import time is
# printed beside, from `wsgi-fcgi --check`; target <= import + 30 ms),
# ours-pools-preload (a fork of the pool's template) and ours-preload (a
# fork of the master's template): target <= 20 ms.
#
# Load step (one pool, `--threads 1`, fcgi-loadgen with RAMP_CONNS=64
# connections from the first instant): `--pm dynamic` starting at 1 worker
# (min-spare 1, max-spare 3, max-workers 8), with `--no-preload` and with
# `--preload` (the default),
# against `--pm static` with 8 workers already running — req/s and p99 in the first second, and req/s in
# the STEADY seconds after it. Full throughput within 1 s: the dynamic
# pool's first-second req/s near its steady req/s.
#
# Knobs: POOLS=50 FIRST=10 SETTLE=3 RAMP_CONNS=64 STEADY=3 SYSTEMS="..."
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
bench=pools.sh
# shellcheck source=tests/bench/lib.sh
. "$root/tests/bench/lib.sh"
default_pyo3_python

POOLS=${POOLS:-50}
FIRST=${FIRST:-10}
SETTLE=${SETTLE:-3}
RAMP_CONNS=${RAMP_CONNS:-64}
STEADY=${STEADY:-3}
SYSTEMS=${SYSTEMS:-"ours-static ours-ondemand ours-ondemand-hit ours-pools-preload ours-preload uwsgi-emperor uwsgi-cheap"}

if [ ! -x target/release/wsgi-fcgi ]; then
  log "target/release/wsgi-fcgi is missing: building it"
  cargo build --release --bin wsgi-fcgi >&2
fi
run=$root/target/bench/pools
rm -rf "$run"
mkdir -p "$run"
cp target/release/wsgi-fcgi "$run/wsgi-fcgi"
BIN=$run/wsgi-fcgi
LOADGEN=$root/target/bench/loadgen-target/release/fcgi-loadgen
if [ ! -x "$LOADGEN" ]; then
  log "building tests/bench/loadgen"
  cargo build --release --quiet --manifest-path tests/bench/loadgen/Cargo.toml \
    --target-dir "$root/target/bench/loadgen-target" >&2
fi
ensure_bench_venv
PY=$VENV/bin/python
same_libpython_or_die "$BIN" "$VENV/bin/uwsgi"
APP=$root/tests/apps/flask_app.py

pids=()
stop_all() {
  local pid
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  pids=()
}
trap stop_all EXIT

pss_kib() { awk '$1 == "Pss:" {print $2}' "/proc/$1/smaps_rollup" 2>/dev/null || echo 0; }
tree() { # pid -> pid and all its descendants
  local pid=$1 child
  echo "$pid"
  for child in $(pgrep -P "$pid" 2>/dev/null || true); do tree "$child"; done
}
# "processes pss_kib" of the trees of the given pids
tree_mem() {
  local pid p n=0 kib=0
  for pid in "$@"; do
    for p in $(tree "$pid"); do n=$((n + 1)); kib=$((kib + $(pss_kib "$p"))); done
  done
  echo "$n $kib"
}
# wait until every socket of $1 (a dir) answers a FastCGI request: $2 sockets
wait_sockets() {
  local dir=$1 count=$2 i
  for i in $(seq 0 $((count - 1))); do
    for _ in $(seq 600); do
      "$LOADGEN" --connect "unix:$dir/p$i.sock" --once >/dev/null 2>&1 && break
      sleep 0.1
    done
  done
}
first_request_ms() { # socket -> ms for one request
  local t0 t1
  t0=$(date +%s%N)
  "$LOADGEN" --connect "unix:$1" --once >/dev/null 2>&1 || die "no answer on $1"
  t1=$(date +%s%N)
  echo $(((t1 - t0) / 1000))
}
median_max() { sort -n | awk '{a[NR]=$1} END {printf "%.1f %.1f", a[int((NR+1)/2)]/1000, a[NR]/1000}'; }

pools_config() { # dir pm-lines -> dir/pools.toml
  local dir=$1 lines=$2 i
  mkdir -p "$dir"
  {
    echo "threads = 1"
    echo "venv = \"$VENV\""
    echo "socket-mode = \"600\""
    printf '%b\n' "$lines"
    for i in $(seq 0 $((POOLS - 1))); do
      printf '[pool.p%d]\napp = "%s"\nbind = "unix:%s/p%d.sock"\n' "$i" "$APP" "$dir" "$i"
    done
  } > "$dir/pools.toml"
}
uwsgi_vassals() { # dir extra-ini-lines -> dir/vassals/*.ini
  local dir=$1 extra=$2 i
  mkdir -p "$dir/vassals"
  for i in $(seq 0 $((POOLS - 1))); do
    printf '[uwsgi]\nmaster = true\nprocesses = 1\nthreads = 1\nfastcgi-socket = %s/p%d.sock\nwsgi-file = %s\nvirtualenv = %s\ndisable-logging = true\n%b\n' \
      "$dir" "$i" "$APP" "$VENV" "$extra" > "$dir/vassals/p$i.ini"
  done
}

results=$run/results.tsv
: > "$results"
row() { # name processes kib
  echo "$1 $2 $3" >> "$results"
  log "$1: $2 processes, $(($3 / 1024)) MiB PSS"
}

for sys in $SYSTEMS; do
  dir=$run/$sys
  case $sys in
    ours-static|ours-ondemand|ours-ondemand-hit)
      pm='workers = 1'
      [ "$sys" = ours-static ] || pm='pm = "ondemand"\nidle-timeout = 60'
      pools_config "$dir" "$pm"
      "$BIN" --config "$dir/pools.toml" 2> "$dir/log" &
      pids=($!)
      if [ "$sys" = ours-static ]; then
        wait_sockets "$dir" "$POOLS"
      else
        for _ in $(seq 300); do [ -S "$dir/p$((POOLS - 1)).sock" ] && break; sleep 0.1; done
      fi
      if [ "$sys" = ours-ondemand-hit ]; then
        for i in $(seq 0 $((POOLS - 1))); do first_request_ms "$dir/p$i.sock"; done > "$dir/first"
        head -n "$FIRST" "$dir/first" | median_max > "$run/first-ondemand"
      fi
      sleep "$SETTLE"
      # shellcheck disable=SC2046
      row "$sys" $(tree_mem "${pids[0]}")
      stop_all ;;
    ours-pools-preload)
      pools_config "$dir" 'pm = "ondemand"\nidle-timeout = 60\npreload = true'
      "$BIN" --config "$dir/pools.toml" 2> "$dir/log" &
      pids=($!)
      for _ in $(seq 1200); do
        [ "$(grep -c ': template [0-9]* ready' "$dir/log" 2>/dev/null)" -ge "$POOLS" ] && break
        sleep 0.1
      done
      sleep "$SETTLE"
      # shellcheck disable=SC2046
      row "$sys" $(tree_mem "${pids[0]}")
      for i in $(seq 0 $((FIRST - 1))); do first_request_ms "$dir/p$i.sock"; done \
        | median_max > "$run/first-pools-preload"
      stop_all ;;
    ours-preload)
      mkdir -p "$dir"
      for i in $(seq 0 $((POOLS - 1))); do
        "$BIN" --app "$APP" --venv "$VENV" --threads 1 --pm ondemand --preload --idle-timeout 60 \
          --bind "unix:$dir/p$i.sock" --socket-mode 600 2> "$dir/log.$i" &
        pids+=($!)
      done
      for i in $(seq 0 $((POOLS - 1))); do
        for _ in $(seq 600); do grep -q "pm ondemand on" "$dir/log.$i" 2>/dev/null && break; sleep 0.1; done
      done
      sleep "$SETTLE"
      # shellcheck disable=SC2046
      row "$sys" $(tree_mem "${pids[@]}")
      for i in $(seq 0 $((FIRST - 1))); do first_request_ms "$dir/p$i.sock"; done \
        | median_max > "$run/first-preload"
      stop_all ;;
    uwsgi-emperor|uwsgi-cheap)
      extra=''
      [ "$sys" = uwsgi-cheap ] && extra='cheap = true'
      uwsgi_vassals "$dir" "$extra"
      "$VENV/bin/uwsgi" --emperor "$dir/vassals" --disable-logging 2> "$dir/log" &
      pids=($!)
      for _ in $(seq 600); do [ -S "$dir/p$((POOLS - 1)).sock" ] && break; sleep 0.1; done
      wait_sockets "$dir" 1 # (a request would end uwsgi-cheap's cheapness: only p0)
      sleep "$SETTLE"
      # shellcheck disable=SC2046
      row "$sys" $(tree_mem "${pids[0]}")
      stop_all ;;
    *) die "unknown system $sys" ;;
  esac
done

# The app's import time, as a worker would import it.
import_ms=$("$BIN" --app "$APP" --venv "$VENV" --check 2>/dev/null | sed -n 's/.*imported in \([0-9]*\) ms.*/\1/p')

# --- load step ---------------------------------------------------------------
ramp() { # name args... -> "first_rps first_p99_ms steady_rps"
  local name=$1 dir=$run/ramp-$1 first steady
  shift
  mkdir -p "$dir"
  "$BIN" --app "$APP" --venv "$VENV" --threads 1 --bind "unix:$dir/s.sock" "$@" 2> "$dir/log" &
  pids=($!)
  for _ in $(seq 600); do grep -q " ready (" "$dir/log" 2>/dev/null && break; sleep 0.1; done
  sleep 1
  first=$("$LOADGEN" --connect "unix:$dir/s.sock" --connections "$RAMP_CONNS" --duration 1 --warmup 0)
  steady=$("$LOADGEN" --connect "unix:$dir/s.sock" --connections "$RAMP_CONNS" --duration "$STEADY" --warmup 0)
  "$PY" - "$first" "$steady" <<'EOF'
import json, sys
first, steady = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"{first['rps']:.0f} {first['p99_us'] / 1000:.1f} {steady['rps']:.0f} {first['errors'] + steady['errors']}")
EOF
  stop_all
}
ramp_dynamic=$(ramp dynamic --pm dynamic --start-workers 1 --min-spare 1 --max-spare 3 --max-workers 8 --no-preload)
ramp_preload=$(ramp dynamic-preload --pm dynamic --start-workers 1 --min-spare 1 --max-spare 3 --max-workers 8 --preload)
ramp_static=$(ramp static --workers 8)

echo
echo "# tests/bench/pools.sh at $(bench_commit): POOLS=$POOLS Flask pools, idle; $(nproc) cores"
"$PY" - "$results" "$POOLS" "$import_ms" "$(cat "$run/first-ondemand" 2>/dev/null || echo '- -')" \
  "$(cat "$run/first-preload" 2>/dev/null || echo '- -')" "$ramp_dynamic" "$ramp_static" "$RAMP_CONNS" "$ramp_preload" \
  "$(cat "$run/first-pools-preload" 2>/dev/null || echo '- -')" <<'EOF'
import sys
results, pools, import_ms = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rows = [line.split() for line in open(results) if line.strip()]
base = next((int(k) for name, n, k in rows if name == "ours-static"), None)
print(f"| system | processes | PSS MiB | per pool MiB | / ours-static |")
print(f"|---|---|---|---|---|")
for name, n, kib in rows:
    kib = int(kib)
    ratio = f"{kib / base:.3f}" if base else "-"
    print(f"| {name} | {n} | {kib / 1024:.0f} | {kib / 1024 / pools:.1f} | {ratio} |")
od_med, od_max = sys.argv[4].split()
pl_med, pl_max = sys.argv[5].split()
pp_med, pp_max = sys.argv[10].split()
print()
print(f"first request to an idle pool (ms, median / max): ondemand {od_med} / {od_max} "
      f"(the app imports in {import_ms} ms; target <= import + 30); "
      f"pools ondemand + preload {pp_med} / {pp_max}; "
      f"single-app ondemand --preload {pl_med} / {pl_max} (target <= 20)")
d, s, p = sys.argv[6].split(), sys.argv[7].split(), sys.argv[9].split()
print(f"load step, {sys.argv[8]} connections at once (req/s in the first second, its p99, req/s after):")
for name, r in (("dynamic 1 -> 8 --no-preload", d), ("dynamic 1 -> 8 --preload", p), ("static 8", s)):
    print(f"  {name}: {r[0]} req/s, p99 {r[1]} ms, then {r[2]} req/s "
          f"(first / after {int(r[0]) / max(1, int(r[2])):.2f}); errors {r[3]}")
EOF

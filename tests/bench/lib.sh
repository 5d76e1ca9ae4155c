# Shared helpers for tests/bench/fcgi.sh and tests/bench/workers.sh; sourced,
# not run. The sourcing script sets, before calling these: bench (its name,
# the prefix of die/log messages), run (the run directory), PY (the bench
# venv's python), NGINX_PORT, and defines stop_server (used by cleanup).

die() { echo "$bench: $*" >&2; exit 1; }
log() { echo "$bench: $*" >&2; }
need_tools() { # tool...
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null || die "$tool is not installed (apt-get install wrk nginx curl)"
  done
}
default_pyo3_python() { # sets and exports PYO3_PYTHON if unset
  if [ -z "${PYO3_PYTHON:-}" ]; then
    if command -v pyenv >/dev/null; then PYO3_PYTHON=$(pyenv which python3); else PYO3_PYTHON=$(command -v python3); fi
  fi
  export PYO3_PYTHON
}
same_libpython_or_die() { # ours uwsgi: both must embed the same libpython
  local ours_lib uwsgi_lib
  ours_lib=$(ldd "$1" | awk '/libpython/ {print $3}')
  uwsgi_lib=$(ldd "$2" | awk '/libpython/ {print $3}')
  [ -n "$ours_lib" ] && [ "$ours_lib" = "$uwsgi_lib" ] \
    || die "uWSGI embeds ${uwsgi_lib:-a static Python}, ours ${ours_lib:-?}: rebuild the venv"
}
ensure_bench_venv() { # sets VENV: target/bench-venv (flask, flup, uWSGI built against PYO3_PYTHON)
  VENV=$root/target/bench-venv
  local reqs="flask==3.1.3 werkzeug==3.1.9 flup==1.0.3 uwsgi==2.0.31"
  if [ ! -x "$VENV/bin/uwsgi" ] || [ "$(cat "$VENV/.bench-reqs" 2>/dev/null)" != "$reqs $PYO3_PYTHON" ]; then
    log "creating $VENV (uWSGI is compiled against $PYO3_PYTHON: takes a minute)"
    rm -rf "$VENV"
    "$PYO3_PYTHON" -m venv "$VENV" >&2
    # shellcheck disable=SC2086
    "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-binary uwsgi $reqs >&2
    echo "$reqs $PYO3_PYTHON" > "$VENV/.bench-reqs"
  fi
}
bench_commit() { # short HEAD, +dirty if the server's sources differ from it
  local commit
  commit=$(git rev-parse --short HEAD 2>/dev/null || echo '?')
  git diff --quiet HEAD -- src bin Cargo.toml Cargo.lock 2>/dev/null || commit="$commit+dirty"
  echo "$commit"
}

# --- workloads -----------------------------------------------------------------
app_file() {
  case $1 in
    hello) echo tests/apps/hello.py ;;
    flask) echo tests/apps/flask_app.py ;;
    stream10) echo tests/bench/apps/stream10.py ;;
    *) die "unknown workload $1" ;;
  esac
}
expected_body() {
  case $1 in
    hello) printf 'Hello, world!\n' ;;
    flask) printf 'Hello from Flask\n' ;;
    stream10) "$PY" -c 'import sys; sys.stdout.buffer.write(b"0123456789abcdef" * 4096 * 160)' ;;
  esac
}

# --- CPU accounting ------------------------------------------------------------
# A server's worker processes: its children but our --preload template
# (comm wsgi-fcgi-tmpl, which holds the app as uWSGI's master does).
children() { pgrep -P "$1" 2>/dev/null | while read -r p; do [ "$(cat "/proc/$p/comm" 2>/dev/null)" = wsgi-fcgi-tmpl ] || echo "$p"; done || true; }
templates() { pgrep -P "$1" 2>/dev/null | while read -r p; do [ "$(cat "/proc/$p/comm" 2>/dev/null)" = wsgi-fcgi-tmpl ] && echo "$p"; done || true; }
proc_cpu_ticks() { # pid -> utime+stime in clock ticks (0 if gone)
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
  # shellcheck disable=SC2086
  set -- ${stat##*) }
  echo $(( ${12} + ${13} ))
}
machine_busy_ticks() {
  local _cpu user nice system idle iowait irq softirq steal _rest
  read -r _cpu user nice system idle iowait irq softirq steal _rest < /proc/stat
  echo $(( user + nice + system + irq + softirq + steal ))
}
now_s() { date +%s.%N; }
TICK=$(getconf CLK_TCK)

# --- nginx: one worker process on 127.0.0.1:NGINX_PORT -------------------------
NGINX_PID=
NGINX_WORKER=
write_nginx_conf() { # socket upstream-extra location-body -> $run/nginx.conf
  mkdir -p "$run/nginx-tmp"
  cat > "$run/nginx.conf" <<EOF
user root;
worker_processes 1;
daemon off;
pid $run/nginx.pid;
error_log $run/nginx-error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $run/nginx-tmp/body;
  fastcgi_temp_path $run/nginx-tmp/fastcgi;
  proxy_temp_path $run/nginx-tmp/proxy;
  uwsgi_temp_path $run/nginx-tmp/uwsgi;
  scgi_temp_path $run/nginx-tmp/scgi;
  upstream app {
    server unix:$1;
    $2
  }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    keepalive_requests 1000000;
    location / {$3
    }
  }
}
EOF
}
launch_nginx() { # runs $run/nginx.conf; sets NGINX_PID and NGINX_WORKER
  local i
  nginx -p "$run" -c "$run/nginx.conf" -e "$run/nginx-error.log" 2>>"$run/nginx-error.log" &
  NGINX_PID=$!
  for i in $(seq 50); do
    NGINX_WORKER=$(children "$NGINX_PID" | head -1)
    [ -n "$NGINX_WORKER" ] && curl -s -o /dev/null "http://127.0.0.1:$NGINX_PORT/" && return 0
    kill -0 "$NGINX_PID" 2>/dev/null || break
    sleep 0.1
  done
  cat "$run/nginx-error.log" >&2
  die "nginx did not come up"
}
stop_nginx() {
  [ -n "$NGINX_PID" ] || return 0
  local i
  kill "-${FRONT_STOP_SIGNAL:-QUIT}" "$NGINX_PID" 2>/dev/null || true
  for i in $(seq 30); do kill -0 "$NGINX_PID" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$NGINX_PID" ${NGINX_WORKER:+"$NGINX_WORKER"} 2>/dev/null || true
  wait "$NGINX_PID" 2>/dev/null || true
  NGINX_PID=
  NGINX_WORKER=
}
cleanup() { stop_nginx; stop_server; }

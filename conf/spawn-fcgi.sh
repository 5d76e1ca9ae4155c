#!/bin/sh
# wsgi-gateway: start `wsgi-fcgi` under spawn-fcgi, the classic FastCGI
# launcher: spawn-fcgi creates the listening socket (owner, group, mode),
# optionally switches to an unprivileged user, and execs wsgi-fcgi with the
# socket on fd 0 (FCGI_LISTENSOCK_FILENO), which wsgi-fcgi adopts when started
# without --bind. With -n (no fork) spawn-fcgi *becomes* wsgi-fcgi, so a
# service manager (systemd, runit, daemontools) supervises it directly and
# its SIGTERM reaches wsgi-fcgi (graceful stop). Then point nginx, Apache
# mod_proxy_fcgi or lighttpd at the socket (conf/nginx/wsgi-fcgi.conf,
# conf/apache/wsgi-fcgi-proxy.conf, conf/lighttpd/wsgi-fcgi.conf).
#
# Usage: conf/spawn-fcgi.sh [wsgi-fcgi flags...]
#     SPAWN_FCGI_SOCKET=/run/wsgi-fcgi/app.sock SPAWN_FCGI_GROUP=www-data \
#     SPAWN_FCGI_USER=app conf/spawn-fcgi.sh --app /srv/app/app.py --venv /srv/app/venv
#
# Settings (environment):
#   WSGI_FCGI_BIN      the wsgi-fcgi binary          (/usr/local/bin/wsgi-fcgi)
#   SPAWN_FCGI_SOCKET  unix socket to create         (/run/wsgi-fcgi/app.sock)
#   SPAWN_FCGI_MODE    its mode                                         (0660)
#   SPAWN_FCGI_GROUP   its group: the web server's group, so that its workers
#                      can connect (www-data on Debian; spawn-fcgi -G, root
#                      only)                                  (unset: yours)
#   SPAWN_FCGI_USER    run wsgi-fcgi as this user and its primary group
#                      (spawn-fcgi -u, root only)         (unset: no change)
# The app itself is set by wsgi-fcgi's flags (--app, --venv, --chdir,
# --threads, ...), or by WSGI_APP, WSGI_VENV, WSGI_CHDIR in the environment
# (leave a variable unset rather than empty).
#
# The equivalent command line:
#     spawn-fcgi -n -s /run/wsgi-fcgi/app.sock -M 0660 -G www-data -u app -- \
#         /usr/local/bin/wsgi-fcgi --app /srv/app/app.py --venv /srv/app/venv
set -eu

bin=${WSGI_FCGI_BIN:-/usr/local/bin/wsgi-fcgi}
socket=${SPAWN_FCGI_SOCKET:-/run/wsgi-fcgi/app.sock}
set -- -n -s "$socket" -M "${SPAWN_FCGI_MODE:-0660}" -- "$bin" "$@"
# Options before the `--`: prepend them (in reverse order).
if [ -n "${SPAWN_FCGI_USER:-}" ]; then
  set -- -u "$SPAWN_FCGI_USER" "$@"
fi
if [ -n "${SPAWN_FCGI_GROUP:-}" ]; then
  set -- -G "$SPAWN_FCGI_GROUP" "$@"
fi
exec spawn-fcgi "$@"

#!/bin/sh
# ~/public_html/cgi-bin/app.fcgi (chmod 755, owned by you): mod_fcgid runs
# it as you, under suEXEC, and keeps it resident; requests to
# /~you/cgi-bin/app.fcgi/ reach the app. The socket is on fd 0 (mod_fcgid's
# way), so no --bind. mod_fcgid sends one request at a time per process:
# --threads 1. suEXEC clears the environment (no HOME, USER or
# XDG_RUNTIME_DIR; PATH=/usr/local/bin:/usr/bin:/bin), so every setting is
# written here.
exec /usr/local/bin/wsgi-fcgi --app /home/you/site/app.py --venv /home/you/site/venv --threads 1

#!/usr/local/bin/wsgi-cgi
# ~/public_html/cgi-bin/app.cgi (chmod 755, owned by you): served at
# /~you/cgi-bin/app.cgi/ as you, under suEXEC. Script mode: this file names
# the app, since suEXEC clears SetEnv variables. Keep the binary out of
# public_html (here /usr/local/bin, or ~/bin/wsgi-cgi); keep the app and the
# venv in a directory of your own, chmod 700.
app = "/home/you/site/app.py"
venv = "/home/you/site/venv"
# Warm mode: the first request starts a resident wsgi-fcgi of this app (in
# ~/.wsgi-gateway, created 0700); later ones are relayed to it in
# milliseconds. Upload new code, then `touch /home/you/site/restart.txt`.
# warm = true

#!/usr/local/bin/wsgi-cgi
# A wsgi-gateway script for a cgi-bin directory (script mode).
#
# The kernel runs the program named on the first line with this file as its
# argument, so the first line must be the absolute path of wsgi-cgi. The rest
# is TOML; every `#` line, the first one included, is a TOML comment.
# Make the file executable (chmod 755) and readable by the web server's user.
#
# Relative paths below are relative to the directory of this file.
# Settings given here win over WSGI_* environment variables; command-line
# flags would win over both, but web servers pass none.

# The WSGI application (required, else wsgi-cgi serves its demo app):
#   "app.py" or "project/app.wsgi"   a file, callable `application` in it
#   "package.module:callable"        a module on sys.path (see chdir/pythonpath)
#   "package.module:create_app()"    an app factory, called once per request
app = "/srv/wsgi/app.py"

# The app's virtualenv. It must have been created with the same Python
# major.minor that wsgi-cgi is linked against, else wsgi-cgi refuses to start.
venv = "/srv/wsgi/venv"

# Change to this directory before loading the app; it is also put on sys.path.
# chdir = "/srv/wsgi"

# Extra directories put in front of sys.path, in this order.
# pythonpath = ["/srv/wsgi/lib", "vendor"]

"""The benchmark's anchor: serve one CGI request with the standard library.

    <venv>/bin/python tests/bench/wsgiref_cgi.py path/to/app.py

Loads the app file the way a classic CGI script would (its directory goes on
sys.path, the module is imported, `application` is taken from it) and runs
wsgiref.handlers.CGIHandler().run(application): CGI meta-variables from the
environment, the body from stdin, the response on stdout. Run it with the
same interpreter and virtualenv as wsgi-cgi so the comparison is fair.
"""
import importlib
import os
import sys
from wsgiref.handlers import CGIHandler


def main(argv):
    if len(argv) != 2:
        sys.exit(f"usage: {argv[0]} path/to/app.py")
    directory, filename = os.path.split(os.path.abspath(argv[1]))
    sys.path.insert(0, directory)
    module = importlib.import_module(os.path.splitext(filename)[0])
    CGIHandler().run(module.application)


if __name__ == "__main__":
    main(sys.argv)

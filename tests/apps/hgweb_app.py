"""Mercurial's own web server, hgweb, as the WSGI app: serves the repository
named by the HGWEB_REPO environment variable (tests/webservers_fcgi.rs
creates one with `hg init` and a commit, then clones it over HTTP).
Needs Mercurial (the test virtualenv)."""
import os

from mercurial.hgweb import hgweb

application = hgweb(os.fsencode(os.environ["HGWEB_REPO"]))

"""Trac (tests/webservers_fcgi.rs): the environment named by $TRAC_ENV, as
Trac's own WSGI docs set it up."""

from trac.web.main import dispatch_request as application  # noqa: F401

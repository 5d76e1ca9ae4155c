"""One responder for the FastCGI web-server tests (tests/webservers_fcgi.rs):
the routes of gateway.py (/environ, /echo, /raise, /big, /file, ...) and of
stream_app.py (/stream, /bytes, /sha256) as they are, everything else to the
Flask app (/, /json, /form, /upload, /go, /path/<name>, /boom). The paths do
not overlap, and SCRIPT_NAME/PATH_INFO reach each app unchanged.
/slow-close is Flask's / whose iterable's close() takes 20 ms after the body
went out (a web server that pipelines the next request, like HAProxy, sends
it meanwhile). Needs Flask (the test virtualenv)."""
import time

import flask_app
import gateway
import stream_app


class _SlowClose:
    def __init__(self, body):
        self.body = body

    def __iter__(self):
        return iter(self.body)

    def close(self):
        time.sleep(0.02)
        if hasattr(self.body, "close"):
            self.body.close()


def application(environ, start_response):
    path = environ.get("PATH_INFO", "")
    if path == "/slow-close":
        environ["PATH_INFO"] = "/"
        return _SlowClose(flask_app.app(environ, start_response))
    if path in gateway.ROUTES:
        return gateway.application(environ, start_response)
    if path in stream_app.ROUTES:
        return stream_app.application(environ, start_response)
    return flask_app.app(environ, start_response)

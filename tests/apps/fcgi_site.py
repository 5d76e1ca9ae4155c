"""One responder for the FastCGI web-server tests (tests/webservers_fcgi.rs):
the routes of gateway.py (/environ, /echo, /raise, /big, /file, ...) and of
stream_app.py (/stream, /bytes, /sha256) as they are, everything else to the
Flask app (/, /json, /form, /upload, /go, /path/<name>, /boom). The paths do
not overlap, and SCRIPT_NAME/PATH_INFO reach each app unchanged.
Needs Flask (the test virtualenv)."""
import flask_app
import gateway
import stream_app


def application(environ, start_response):
    path = environ.get("PATH_INFO", "")
    if path in gateway.ROUTES:
        return gateway.application(environ, start_response)
    if path in stream_app.ROUTES:
        return stream_app.application(environ, start_response)
    return flask_app.app(environ, start_response)

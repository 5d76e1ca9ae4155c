"""Fixture routes for the FastCGI tests (tests/fcgi_*.rs): an authorizer,
a slow route, a slowly produced download, a response with a slow close(), a large streaming download, a streaming upload digest and a
wsgi.errors writer. Every other path is served by gateway.py, so one
responder covers both sets of routes.
"""
import hashlib
import json
import threading
import time

import gateway


def _query(environ):
    out = {}
    for part in environ.get("QUERY_STRING", "").split("&"):
        if "=" in part:
            k, v = part.split("=", 1)
            out[k] = v
    return out


def _json(start_response, obj, status="200 OK"):
    body = json.dumps(obj, sort_keys=True).encode("utf-8")
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def authorize(environ, start_response):
    """FCGI_AUTHORIZER: 200 (with Variable-* headers) for the right token,
    403 with a page otherwise. Reports the role and any body it was given."""
    role = environ.get("FCGI_ROLE", "")
    body_len = len(environ["wsgi.input"].read())
    if environ.get("HTTP_AUTHORIZATION") == "Bearer let-me-in":
        start_response("200 OK", [
            ("Variable-AUTH_USER", "alice"),
            ("Variable-AUTH_ROLE_SEEN", role),
            ("X-Body-Len", str(body_len)),
            ("Content-Length", "0"),
        ])
        return []
    body = b"denied\n"
    start_response("403 Forbidden", [
        ("Content-Type", "text/plain"),
        ("Content-Length", str(len(body))),
        ("X-Role", role),
        ("X-Body-Len", str(body_len)),
    ])
    return [body]


def sleep(environ, start_response):
    """Sleep ?s= seconds (writes "started" to ?started=FILE first)."""
    q = _query(environ)
    if "started" in q:
        with open(q["started"], "w") as f:
            f.write("started")
    seconds = float(q.get("s", "0.5"))
    begun = time.monotonic()
    time.sleep(seconds)
    return _json(start_response, {
        "slept": seconds,
        "thread": threading.get_ident(),
        "elapsed": time.monotonic() - begun,
    })


def huge(environ, start_response):
    """?mb= MiB of a known pattern in 64 KiB chunks; ?marker=FILE gets
    "closed" when the generator is closed (finally)."""
    q = _query(environ)
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return _huge_body(int(q.get("mb", "200")), q.get("marker"))


def _huge_body(mb, marker):
    chunk = bytes(range(256)) * 256  # 64 KiB
    try:
        for _ in range(mb * 16):
            yield chunk
    finally:
        if marker:
            with open(marker, "w") as f:
                f.write("closed")


def drip(environ, start_response):
    """?n= chunks of 64 KiB of the /huge pattern, ?ms= milliseconds apart:
    a download that is still producing while others are."""
    q = _query(environ)
    n, pause = int(q.get("n", "20")), float(q.get("ms", "10")) / 1000
    chunk = bytes(range(256)) * 256

    def body():
        for _ in range(n):
            yield chunk
            time.sleep(pause)

    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return body()


def sha256(environ, start_response):
    """Read wsgi.input in 64 KiB pieces (never all at once) and return its
    length and digest. ?marker=FILE gets "done" once the body was read."""
    q = _query(environ)
    digest = hashlib.sha256()
    total = 0
    inp = environ["wsgi.input"]
    while True:
        block = inp.read(65536)
        if not block:
            break
        digest.update(block)
        total += len(block)
    if "marker" in q:
        with open(q["marker"], "w") as f:
            f.write("done %d" % total)
    return _json(start_response, {"len": total, "sha256": digest.hexdigest()})


class _SlowClose:
    """A response whose close() takes ?s= seconds (after its body went out)."""

    def __init__(self, seconds):
        self.seconds = seconds

    def __iter__(self):
        yield b"body sent; closing slowly\n"

    def close(self):
        time.sleep(self.seconds)


def slow_close(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return _SlowClose(float(_query(environ).get("s", "0.3")))


def ran(environ, start_response):
    """Writes "ran" to ?marker=FILE: proves whether the app was called."""
    with open(_query(environ)["marker"], "w") as f:
        f.write("ran")
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ran\n"]


def errors(environ, start_response):
    """Writes a line to wsgi.errors (the log, and FCGI_STDERR with --forward-stderr)."""
    environ["wsgi.errors"].write("ERRORS-STREAM-LINE\n")
    environ["wsgi.errors"].flush()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"logged\n"]


ROUTES = {
    "/authorize": authorize,
    "/sleep": sleep,
    "/huge": huge,
    "/drip": drip,
    "/sha256": sha256,
    "/ran": ran,
    "/slow-close": slow_close,
    "/errors": errors,
}


def application(environ, start_response):
    route = ROUTES.get(environ.get("PATH_INFO", ""))
    if route is None:
        return gateway.application(environ, start_response)
    return route(environ, start_response)

"""Fixture app exercising every PEP 3333 rule the gateway must honour.

Dispatch is by PATH_INFO; each route documents what the test expects.
"""
import json
import os
import sys


def _json(start_response, obj, status="200 OK"):
    body = json.dumps(obj, sort_keys=True).encode("utf-8")
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def _query(environ):
    out = {}
    for part in environ.get("QUERY_STRING", "").split("&"):
        if "=" in part:
            k, v = part.split("=", 1)
            out[k] = v
    return out


def environ_route(environ, start_response):
    data = {k: v for k, v in environ.items() if isinstance(v, str)}
    data["wsgi.version"] = list(environ["wsgi.version"])
    for key in ("wsgi.multithread", "wsgi.multiprocess", "wsgi.run_once", "wsgi.input_terminated"):
        data[key] = environ[key]
    data["types"] = sorted({type(v).__name__ for k, v in environ.items() if not k.startswith("wsgi.")})
    data["os.environ.HTTP_PROXY"] = os.environ.get("HTTP_PROXY")
    if "mutate=1" in environ.get("QUERY_STRING", ""):
        # What middleware does to its environ: none of it may reach the
        # next request (the responder makes environs from a template).
        environ["PATH_INFO"] = "/mutated"
        environ["X_ADDED"] = "added"
        environ["wsgi.url_scheme"] = "gopher"
        environ["wsgi.version"] = (9, 9)
        del environ["QUERY_STRING"]
        environ.pop("HTTP_X_SAME", None)
    return _json(start_response, data)


def echo(environ, start_response):
    length = int(environ.get("CONTENT_LENGTH") or 0)
    size = int(_query(environ).get("size", length + 100))
    data = environ["wsgi.input"].read(size)
    more = environ["wsgi.input"].read(10)
    start_response("200 OK", [("Content-Type", "application/octet-stream"), ("X-More", str(len(more)))])
    return [data]


def read_all(environ, start_response):
    data = environ["wsgi.input"].read()
    again = environ["wsgi.input"].read()
    return _json(start_response, {"len": len(data), "again": len(again), "head": data[:20].decode("latin-1")})


def lines(environ, start_response):
    inp = environ["wsgi.input"]
    out = {
        "first": inp.readline().decode(),
        "limited": inp.readline(3).decode(),
        "rest_of_line": inp.readline().decode(),
        "hinted": [x.decode() for x in inp.readlines(1)],
        "iterated": [x.decode() for x in inp],
        "after": inp.readline().decode(),
    }
    return _json(start_response, out)


def write_callable(environ, start_response):
    write = start_response("200 OK", [("Content-Type", "text/plain")])
    write(b"written ")
    write(b"")
    return [b"then ", b"returned\n"]


def lazy(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    yield b""
    yield b"lazy "
    yield b"body\n"


def lazy_start(environ, start_response):
    # start_response is called only when iteration begins
    def gen():
        start_response("201 Created", [("Content-Type", "text/plain")])
        yield b"created\n"

    return gen()


def exc_before_headers(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("X-Old", "1")])
    try:
        raise ValueError("handled")
    except ValueError:
        start_response("503 Service Unavailable", [("Content-Type", "text/plain")], sys.exc_info())
    return [b"replaced by the error page of the app\n"]


def exc_after_headers(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    yield b"partial "
    try:
        raise ValueError("SECRET-AFTER-HEADERS")
    except ValueError:
        # headers are out: start_response must re-raise
        start_response("500 Internal Server Error", [("Content-Type", "text/plain")], sys.exc_info())
    yield b"never sent\n"


class ClosingBody:
    def __init__(self, marker, fail):
        self.marker = marker
        self.fail = fail

    def __iter__(self):
        yield b"one "
        if self.fail:
            raise RuntimeError("SECRET-ITERATION-FAILED")
        yield b"two\n"

    def close(self):
        with open(self.marker, "w") as f:
            f.write("closed")


def close_route(environ, start_response):
    q = _query(environ)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return ClosingBody(q["marker"], q.get("fail") == "1")


def file_wrapper(environ, start_response):
    q = _query(environ)
    f = open(q["path"], "rb")
    if "skip" in q:
        f.seek(int(q["skip"]))
    headers = [("Content-Type", "application/octet-stream")]
    if "length" in q:
        headers.append(("Content-Length", q["length"]))
    start_response("200 OK", headers)
    return environ["wsgi.file_wrapper"](f, 4096)


def printer(environ, start_response):
    print("THIS-GOES-TO-STDERR")
    sys.stdout.write("ALSO-STDERR\n")
    sys.stdout.flush()
    os.write(1, b"FD1-GOES-TO-STDERR\n")
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"clean\n"]


def bad_status(environ, start_response):
    status = {
        "nocode": "OK",
        "short": "20 OK",
        "crlf": "200 OK\r\nX-Injected: 1",
        "noreason": "200",
    }[_query(environ)["s"]]
    start_response(status, [("Content-Type", "text/plain")])
    return [b"should not be seen\n"]


def bad_header(environ, start_response):
    kind = _query(environ)["h"]
    headers = {
        "crlf": [("X-Test", "a\r\nSet-Cookie: injected=1")],
        "lf": [("X-Test", "a\nb")],
        "nonlatin": [("X-Test", "\u2603")],
        "name": [("X Test", "v")],
        "bytes": [(b"X-Test", b"v")],
    }[kind]
    start_response("200 OK", headers)
    return [b"should not be seen\n"]


def raise_before(environ, start_response):
    raise RuntimeError("SECRET-TRACEBACK-DETAIL")


def no_start_response(environ, start_response):
    return [b"body without headers"]


def non_bytes(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return ["a str is not bytes"]


def empty(environ, start_response):
    start_response("204 No Content", [])
    return []


def too_long(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "3")])
    return [b"abcdefghij"]


def hop_by_hop(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Connection", "close")])
    return [b"ok\n"]


def head(environ, start_response):
    body = b"a body HEAD must not send\n"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def latin1_header(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("X-Name", "caf\u00e9")])
    return [b"ok\n"]


def big(environ, start_response):
    q = _query(environ)
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return _big_body(q.get("marker"))


def _big_body(marker):
    try:
        for _ in range(1000):
            yield b"x" * 65536
    finally:
        if marker:
            with open(marker, "w") as f:
                f.write("closed")


def sys_route(environ, start_response):
    return _json(start_response, {
        "path": sys.path,
        "prefix": sys.prefix,
        "exec_prefix": sys.exec_prefix,
        "base_prefix": sys.base_prefix,
        "modules": sorted(m for m in ("sitecustomize", "usercustomize", "pth_marker", "wsgiref") if m in sys.modules),
    })


ROUTES = {
    "/sys": sys_route,
    "/big": big,
    "/environ": environ_route,
    "/echo": echo,
    "/read-all": read_all,
    "/lines": lines,
    "/write": write_callable,
    "/lazy": lazy,
    "/lazy-start": lazy_start,
    "/exc-before": exc_before_headers,
    "/exc-after": exc_after_headers,
    "/close": close_route,
    "/file": file_wrapper,
    "/print": printer,
    "/bad-status": bad_status,
    "/bad-header": bad_header,
    "/raise": raise_before,
    "/no-start": no_start_response,
    "/non-bytes": non_bytes,
    "/empty": empty,
    "/too-long": too_long,
    "/hop": hop_by_hop,
    "/head": head,
    "/latin1-header": latin1_header,
}


def application(environ, start_response):
    route = ROUTES.get(environ.get("PATH_INFO", ""))
    if route is None:
        return _json(start_response, {"error": "no route", "path": environ.get("PATH_INFO")}, "404 Not Found")
    return route(environ, start_response)

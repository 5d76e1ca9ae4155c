"""Fixture app for the FastCGI web-server tests (tests/webservers_fcgi.rs):
streamed responses and large bodies, never held in memory.

- /stream?n=N&delay=S  N lines "chunk i", S seconds apart, from a generator;
                       sends `X-Accel-Buffering: no`, as a streaming app
                       would, to keep nginx from reading ahead into buffers.
- /bytes?size=N        N bytes of a fixed pattern (block i of 64 KiB is byte
                       i % 251 repeated), yielded 64 KiB at a time.
- /sha256              reads the request body 1 MiB at a time and answers
                       {"size": ..., "sha256": ...}.
"""
import hashlib
import json
import time

from gateway import _query

BLOCK = 65536


def stream(environ, start_response):
    q = _query(environ)
    n, delay = int(q.get("n", "5")), float(q.get("delay", "0.2"))
    start_response("200 OK", [("Content-Type", "text/plain"), ("X-Accel-Buffering", "no")])

    def chunks():
        for i in range(n):
            if i:
                time.sleep(delay)
            yield ("chunk %d\n" % i).encode()

    return chunks()


def pattern(environ, start_response):
    size = int(_query(environ)["size"])
    start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(size))])

    def blocks():
        i, left = 0, size
        while left > 0:
            n = min(BLOCK, left)
            yield bytes([i % 251]) * n
            i, left = i + 1, left - n

    return blocks()


def sha256(environ, start_response):
    digest, size = hashlib.sha256(), 0
    stream = environ["wsgi.input"]
    while True:
        data = stream.read(1 << 20)
        if not data:
            break
        digest.update(data)
        size += len(data)
    body = json.dumps({"size": size, "sha256": digest.hexdigest()}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


ROUTES = {"/stream": stream, "/bytes": pattern, "/sha256": sha256}


def application(environ, start_response):
    route = ROUTES.get(environ.get("PATH_INFO", ""))
    if route is None:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"no route\n"]
    return route(environ, start_response)

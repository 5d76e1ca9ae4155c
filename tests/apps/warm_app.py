"""Fixture for the warm-mode tests (tests/warm.rs), copied into a test's
own directory so that a test can change it: responses are
"VERSION PID UID"; /slow?s=SECONDS sleeps first; /echo answers the request
body; /osenv lists the process environment's names (the request's
meta-variables must not be there). IMPORT_DELAY seconds of sleep at import
stand for a slow app (widening the window in which requests find no
responder)."""

import os
import time
from urllib.parse import parse_qs

VERSION = "v1"
IMPORT_DELAY = 0.0
time.sleep(IMPORT_DELAY)


def application(environ, start_response):
    path = environ.get("PATH_INFO", "")
    query = parse_qs(environ.get("QUERY_STRING", ""))
    if path == "/slow":
        time.sleep(float(query.get("s", ["0.1"])[0]))
    if path == "/echo":
        body = environ["wsgi.input"].read()
    elif path == "/osenv":
        body = "\n".join(sorted(os.environ)).encode()
    else:
        body = f"{VERSION} {os.getpid()} {os.getuid()}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]

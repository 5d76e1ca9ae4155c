"""Fixture for the master/worker tests (tests/process.rs and the nginx
reload test): the version comes from the file named by $RELOADABLE_VERSION,
read when the module is imported, so only a worker that imported the app
afresh (a reload) serves a new one; "broken" in the file makes the import
fail. Responses are "VERSION PID"; /slow?s=SECONDS sleeps first; /hang
never returns (in `hang_forever`, for the request timeout tests); /stuck
never returns either, holding the GIL in C code (`stuck_in_c`: libc's
sleep through ctypes.PyDLL, which keeps the GIL). With ?started=FILE,
"started" is written to FILE as the request begins (tests wait for it
instead of sleeping)."""

import ctypes
import os
import time
from urllib.parse import parse_qs

with open(os.environ["RELOADABLE_VERSION"]) as f:
    VERSION = f.read().strip()
if os.environ.get("RELOADABLE_IMPORTS"):  # which process imported us, when
    with open(os.environ["RELOADABLE_IMPORTS"], "a") as f:
        f.write(f"{os.getpid()} {VERSION}\n")
if VERSION == "broken":
    raise RuntimeError("this version of the app does not import")


def hang_forever():
    while True:
        time.sleep(0.05)


def stuck_in_c():
    ctypes.PyDLL(None).sleep(1000)


def application(environ, start_response):
    query = {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
    if "started" in query:
        with open(query["started"], "w") as f:
            f.write("started")
    if environ.get("PATH_INFO") == "/hang":
        hang_forever()
    if environ.get("PATH_INFO") == "/stuck":
        stuck_in_c()
    if environ.get("PATH_INFO") == "/slow":
        time.sleep(float(query.get("s", "1.0")))
    body = f"{VERSION} {os.getpid()}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]

"""flup's FastCGI server (flup.server.fcgi.WSGIServer) for tests/bench/fcgi.sh.

Usage: python flup_server.py APP.py SOCKET_PATH THREADS MAX_CONNECTIONS

flup is thread-per-connection: each FastCGI connection is a job of its
thread pool, so the pool must hold a thread per connection or connections
beyond it are closed at accept. THREADS therefore maps to flup's own knob:
THREADS=1 -> multithreaded=False (an app lock lets one request run the app
at a time, like one app thread), THREADS>1 -> multithreaded=True (GIL-bound,
as everywhere). maxThreads is MAX_CONNECTIONS, so no connection is refused.
"""
import importlib.util
import os
import sys

from flup.server.fcgi import WSGIServer


def load(path):
    spec = importlib.util.spec_from_file_location("bench_app", path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
    spec.loader.exec_module(module)
    return module.application


def main():
    app_path, sock, threads, max_conns = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    app = load(app_path)
    if os.path.exists(sock):
        os.unlink(sock)
    server = WSGIServer(
        app,
        bindAddress=sock,
        multithreaded=threads > 1,
        multiplexed=False,
        debug=False,
        minSpare=1,
        maxSpare=max_conns,
        maxThreads=max_conns,
    )
    server.run()


if __name__ == "__main__":
    main()

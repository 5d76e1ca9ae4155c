"""flup's pre-forking FastCGI server (flup.server.fcgi_fork.WSGIServer) for tests/bench/workers.sh.

Usage: python flup_prefork.py APP.py SOCKET_PATH WORKERS

PHP-FPM-style prefork: a parent process keeps a fixed pool of WORKERS child
processes (minSpare = maxSpare = maxChildren = WORKERS), each serving one
FastCGI connection at a time, single-threaded. A child is held by its
connection until the web server closes it, so nginx must not keep
connections to it alive (fastcgi_keep_conn off), as with PHP-FPM's
pm=static.
"""
import importlib.util
import os
import sys

from flup.server.fcgi_fork import WSGIServer


def load(path):
    spec = importlib.util.spec_from_file_location("bench_app", path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
    spec.loader.exec_module(module)
    return module.application


def main():
    app_path, sock, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
    app = load(app_path)
    if os.path.exists(sock):
        os.unlink(sock)
    server = WSGIServer(
        app,
        bindAddress=sock,
        umask=0,
        multiplexed=False,
        debug=False,
        minSpare=workers,
        maxSpare=workers,
        maxChildren=workers,
    )
    server.run()


if __name__ == "__main__":
    main()

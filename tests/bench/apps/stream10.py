"""Benchmark app: a 10 MiB body streamed as 160 chunks of 64 KiB.

The chunk is built once at import, so the app itself costs next to nothing
per chunk: what is measured is how fast the gateway moves a yielded body to
the web server. Content-Length is declared, as a file download would.
"""

CHUNK = b"0123456789abcdef" * 4096  # 64 KiB
COUNT = 160  # 160 * 64 KiB = 10 MiB
LENGTH = len(CHUNK) * COUNT


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(LENGTH))])
    for _ in range(COUNT):
        yield CHUNK

"""The built-in demo app of wsgi-gateway: an environ dump, like wsgiref's demo_app."""


def application(environ, start_response):
    lines = ["Hello from wsgi-gateway!", "", "This is the built-in demo app; pass --app to serve yours.", ""]
    for key in sorted(environ):
        lines.append("%s = %r" % (key, environ[key]))
    body = ("\n".join(lines) + "\n").encode("utf-8")
    start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))])
    return [body]

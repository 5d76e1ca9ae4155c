"""An app built by a factory: --app factory:create_app()."""


def create_app():
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"made by a factory\n"]

    return app


def create_with(greeting, path="/", times=1):
    """--app 'factory:create_with("hi", path="/srv/x", times=2)' (gunicorn's form)."""

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [f"{greeting} {path}\n".encode() * times]

    return app

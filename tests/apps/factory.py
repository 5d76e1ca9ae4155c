"""An app built by a factory: --app factory:create_app()."""


def create_app():
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"made by a factory\n"]

    return app

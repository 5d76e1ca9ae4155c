"""A real Flask app for the framework tests (routes, JSON, forms, uploads, redirects)."""
import hashlib

from flask import Flask, jsonify, redirect, request, url_for

app = Flask(__name__)
application = app


@app.route("/")
def index():
    return "Hello from Flask\n"


@app.route("/json")
def json_route():
    return jsonify(ok=True, script_root=request.script_root, path=request.path, args=request.args.to_dict())


@app.route("/form", methods=["POST"])
def form():
    return jsonify(name=request.form.get("name"), city=request.form.get("city"))


@app.route("/upload", methods=["POST"])
def upload():
    f = request.files["file"]
    data = f.read()
    return jsonify(filename=f.filename, size=len(data), sha256=hashlib.sha256(data).hexdigest(), note=request.form.get("note"))


@app.route("/go")
def go():
    return redirect(url_for("json_route"))


@app.route("/path/<name>")
def path(name):
    return jsonify(name=name)


@app.route("/boom")
def boom():
    raise RuntimeError("SECRET-FLASK-DETAIL")

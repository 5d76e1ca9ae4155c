"""Fixture for the shared-hosting tests (tests/suexec.rs), copied into each
test user's ~/site (mode 0700): a Flask app that says who runs it and
whether it can list the directory named by ?other= (another user's ~/site:
it must not)."""

import os
import pwd

from flask import Flask, jsonify, request

app = application = Flask(__name__)


@app.route("/")
def who():
    other = request.args.get("other", "")
    try:
        os.listdir(other)
        other_readable = True
    except OSError:
        other_readable = False
    return jsonify(
        uid=os.getuid(),
        user=pwd.getpwuid(os.getuid()).pw_name,
        pid=os.getpid(),
        other_readable=other_readable,
        home=os.environ.get("HOME"),
        script_name=request.script_root,
    )

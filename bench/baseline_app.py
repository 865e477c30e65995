"""The accept benchmark's baseline: a bare Flask app with one POST route that parses the
JSON body and answers 202 JSON, served exactly like the broker (gunicorn, one gevent
worker, the shared knobs; see gunicorn_baseline.conf.py). What the broker costs on top of
this is its own work."""

from __future__ import annotations

import uuid

from flask import Flask, request

app = Flask(__name__)


@app.post("/messages")
def publish():
    body = request.get_json()
    return {"id": str(uuid.uuid4()), "status": "queued", "size": len(body)}, 202


@app.get("/readyz")
def readyz():
    return {"status": "ready"}

"""The web form at ``/``: static assets served locally (no CDN; machines may be
offline)."""

from __future__ import annotations

from flask import Blueprint, current_app, send_from_directory
from flask.typing import ResponseReturnValue

bp = Blueprint("web", __name__, static_folder="static", static_url_path="/static")


@bp.get("/")
def index() -> ResponseReturnValue:
    return send_from_directory(current_app.root_path + "/static", "index.html")

"""The operator dashboard: one static page at ``/`` and its assets under ``/static/``.

The page is built from ``dashboard/`` by esbuild (``make dashboard``) into a directory of plain
files, ``modelplane/static/`` by default; it talks to the service through GraphQL only, so all
this module does is serve files. The directory is looked at on every request rather than once
at start-up, so a service started before the first build picks the bundle up without a restart;
until then ``/`` answers 503 with a one-line hint instead of failing.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, HTTPException
from fastapi.responses import FileResponse, PlainTextResponse, Response

DEFAULT_DIR = Path(__file__).resolve().parent / "static"
INDEX = "index.html"
NOT_BUILT = "dashboard not built: run make dashboard\n"

# The page changes with every build while its name stays the same; the assets carry a content
# hash in their names and can be cached for good.
_INDEX_HEADERS = {"Cache-Control": "no-cache"}
_ASSET_HEADERS = {"Cache-Control": "public, max-age=31536000, immutable"}


def install_dashboard(app: FastAPI, directory: Path | None) -> None:
    """Serve ``directory`` (default :data:`DEFAULT_DIR`): ``/`` and ``/static/<file>``."""
    root = (directory or DEFAULT_DIR).resolve()

    @app.get("/", include_in_schema=False)
    async def dashboard_page() -> Response:
        index = root / INDEX
        if not index.is_file():
            return PlainTextResponse(NOT_BUILT, status_code=503)
        return FileResponse(index, media_type="text/html", headers=_INDEX_HEADERS)

    @app.get("/static/{name:path}", include_in_schema=False)
    async def dashboard_asset(name: str) -> Response:
        path = (root / name).resolve()
        if root not in path.parents or not path.is_file() or path.name == INDEX:
            raise HTTPException(status_code=404)
        return FileResponse(path, headers=_ASSET_HEADERS)

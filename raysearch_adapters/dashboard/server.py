"""``raysearch-adapters dashboard``: a read-only web app (aiohttp) over one search's results folder.

Safety: binds 127.0.0.1 unless told otherwise; GET (and HEAD) only; serves the page, its own
assets and a fixed list of result files by name, so no request path ever reaches the disk
(``..`` in any encoding simply matches nothing). The view is rebuilt only when a results file
changed, in a worker thread so a slow read never blocks other requests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import threading
from pathlib import Path
from typing import Optional

from aiohttp import web

from raysearch_adapters.hosts import is_loopback
from raysearch_adapters.dashboard.data import DOWNLOADS, fingerprint
from raysearch_adapters.dashboard.page import STATIC_TYPES, build_view, render_page, static_path
from raysearch_adapters.errors import UserError

log = logging.getLogger(__name__)
_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


class ViewCache:
    """The latest view of a results folder, rebuilt when its fingerprint changes (one build at a time)."""

    def __init__(self, results_dir: Path):
        self.results_dir = results_dir
        self._lock = threading.Lock()
        self._stamp: Optional[str] = None
        self._body: Optional[bytes] = None

    def get(self) -> bytes:
        """The view as JSON bytes."""
        with self._lock:
            stamp = fingerprint(self.results_dir)
            if self._body is None or stamp != self._stamp:
                # Never serve a half-built view: a failure answers with the error, the next poll retries.
                self._body = json.dumps(build_view(self.results_dir), allow_nan=False).encode()
                self._stamp = stamp
            return self._body


_CACHE = web.AppKey("cache", ViewCache)


async def _index(request: web.Request) -> web.Response:
    return web.Response(text=render_page(), content_type="text/html", headers=_HEADERS)


async def _api_view(request: web.Request) -> web.Response:
    cache = request.app[_CACHE]
    try:
        body = await asyncio.get_running_loop().run_in_executor(None, cache.get)
    except Exception as e:  # a bug or an unforeseen file state: the page shows it and keeps polling
        log.exception("dashboard: building the view of %s failed", cache.results_dir)
        body = json.dumps({"error": f"{type(e).__name__}: {e}"}).encode()
    return web.Response(body=body, content_type="application/json",
                        headers={**_HEADERS, "Cache-Control": "no-store"})


async def _static(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    path = static_path(name)
    if path is None:
        raise web.HTTPNotFound(text=f"no such asset; the page's assets are {sorted(STATIC_TYPES)}")
    return web.FileResponse(path, headers={**_HEADERS, "Content-Type": STATIC_TYPES[name]})


async def _result_file(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    path = request.app[_CACHE].results_dir / name
    if name not in DOWNLOADS or not path.is_file():
        raise web.HTTPNotFound(text=f"no such result file; the dashboard serves {list(DOWNLOADS)} when present")
    return web.FileResponse(path, headers={**_HEADERS, "Content-Disposition": f'attachment; filename="{name}"'})


def make_app(results_dir: Path) -> web.Application:
    """The dashboard app for ``results_dir``: GET routes only."""
    app = web.Application()
    app[_CACHE] = ViewCache(Path(results_dir).absolute())
    app.router.add_get("/", _index)
    app.router.add_get("/api/view", _api_view)
    app.router.add_get("/static/{name}", _static)
    app.router.add_get("/files/{name}", _result_file)
    return app


async def _serve_forever(results_dir: Path, host: str, port: int) -> None:
    runner = web.AppRunner(make_app(results_dir), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as e:
        await runner.cleanup()
        raise UserError(f"--host {host} --port {port}: cannot listen ({e.strerror or e}); choose another --port "
                        "or --host") from None
    bound_host, bound_port = runner.addresses[0][:2]  # the real port when --port 0 asked for any free one
    url_host = f"[{bound_host}]" if ":" in bound_host else bound_host
    print(f"dashboard of {results_dir.absolute()} at http://{url_host}:{bound_port}/ (Ctrl-C to stop)", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def serve(results_dir: Path, host: str = "127.0.0.1", port: int = 8765) -> None:
    """Serve the dashboard until interrupted (Ctrl-C)."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise UserError(f"RESULTS_DIR {results_dir}: not a folder; pass a search's results folder "
                        "(results/<search name>/)")
    if not is_loopback(host):
        print(f"warning: --host {host} makes the dashboard reachable from other machines; it has no "
              "authentication (read-only)", flush=True)
    try:
        asyncio.run(_serve_forever(results_dir, host, port))
    except KeyboardInterrupt:
        print("dashboard stopped", flush=True)


def cli_main(args: argparse.Namespace) -> int:
    """``raysearch-adapters dashboard RESULTS_DIR [--host 127.0.0.1] [--port N]``."""
    serve(Path(args.results_dir), host=args.host, port=args.port)
    return 0

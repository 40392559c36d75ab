"""``raysearch-adapters dashboard``: a read-only web app (aiohttp) over one search's results folder.

Safety: binds 127.0.0.1 unless told otherwise; GET (and HEAD) only; serves the page, its own
assets, a fixed list of result files by name and the trial table's exports, so no request path
ever reaches the disk (``..`` in any encoding simply matches nothing), and a result file only
when it is a regular file inside the results folder (never through a link out of it). The one
thing served from outside the results folder is an utterance's audio, by its row number in
``hypotheses.parquet``: exactly the file that row names, when it is a regular audio file and not
a link to another one (``fixed_broken.audio_file``). It answers only requests whose Host header
names this server (its address, a loopback name, or with ``--host 0.0.0.0`` this machine's
names), so a web page cannot read the results through DNS rebinding. The view is rebuilt only
when a results file changed (or the study's importances, computed apart, became ready), in a worker
thread so a slow read never blocks other requests; a page that polls with the fingerprint it drew
gets only that fingerprint back while nothing changed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import threading
from pathlib import Path
from typing import Callable, Optional, Tuple

from aiohttp import hdrs, web

from raysearch_adapters.hosts import is_loopback, machine_names
from raysearch_adapters.dashboard.data import (DOWNLOADS, EXPORTS, ResultFileError, Snapshot, ViewLimits,
                                               fingerprint, result_file, trials_export)
from raysearch_adapters.dashboard.fixed_broken import audio_file
from raysearch_adapters.dashboard.importance import Importances
from raysearch_adapters.dashboard.page import STATIC_TYPES, build_view, render_page, static_path, study_importances
from raysearch_adapters.errors import UserError

log = logging.getLogger(__name__)
_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


# What the importances chart says while a worker thread computes them.
IMPORTANCES_PENDING = "computing the parameter importances from the Optuna study (shown when ready)"


class ViewCache:
    """The latest view of a results folder, rebuilt when its fingerprint changes (one build at a time).

    The study's importances (seconds for a search of many thousands of trials) come from a worker thread: until
    they are ready the view says so, and its fingerprint carries a mark, so the page redraws once they are."""

    def __init__(self, results_dir: Path, limits: ViewLimits = ViewLimits()):
        self.results_dir = results_dir
        self.limits = limits
        self._lock = threading.Lock()
        self._stamp: Optional[str] = None
        self._body: Optional[bytes] = None
        self._drawn: Optional[str] = None  # the fingerprint the built view carries
        self._unchanged: Optional[bytes] = None
        self._pending = False  # the built view waits for importances
        self._imp_lock = threading.Lock()
        self._imp: Tuple[Optional[str], Optional[Importances]] = (None, None)  # (fingerprint, importances)
        self._job: Optional[tuple] = None  # the importances to compute once the view is out

    def _importances(self, stamp: str) -> Callable[[Path, Snapshot], Importances]:
        """For :func:`build_view`: the importances computed for ``stamp``, else a pending message (and, unless a
        worker thread computes them already, the job for one)."""
        def get(results_dir: Path, snap: Snapshot) -> Importances:
            with self._imp_lock:
                if self._imp[0] == stamp:
                    return self._imp[1] or Importances(message=IMPORTANCES_PENDING)
                self._imp = (stamp, None)
            self._job = (stamp, results_dir, snap)
            return Importances(message=IMPORTANCES_PENDING)

        return get

    def _compute(self, stamp: str, results_dir: Path, snap: Snapshot) -> None:
        try:
            imp = study_importances(results_dir, snap)
        except Exception as e:  # shown in place of the chart, as param_importances shows a study's errors
            log.exception("dashboard: the importances of %s failed", results_dir)
            imp = Importances(message=f"cannot compute importances: {type(e).__name__}: {e}")
        with self._imp_lock:
            if self._imp[0] == stamp:  # not a folder that changed since
                self._imp = (stamp, imp)

    def get(self, known: Optional[str] = None) -> bytes:
        """The view as JSON bytes; only its fingerprint and state when that fingerprint is ``known`` (the page
        polls with the one it drew: an unchanged view is not sent again)."""
        with self._lock:
            stamp = fingerprint(self.results_dir)
            with self._imp_lock:
                ready = self._imp[0] == stamp and self._imp[1] is not None
            if self._body is None or stamp != self._stamp or (self._pending and ready):
                # Never serve a half-built view: a failure answers with the error, the next poll retries.
                view = build_view(self.results_dir, limits=self.limits, importances=self._importances(stamp))
                self._pending = view["charts"]["importances"].get("message") == IMPORTANCES_PENDING
                if self._pending:
                    view["fingerprint"] += "|importances-pending"
                self._body = json.dumps(view, allow_nan=False).encode()
                self._drawn = view["fingerprint"]
                self._unchanged = json.dumps({"fingerprint": self._drawn, "state": view["state"],
                                              "unchanged": True}).encode()
                self._stamp = stamp
            if self._job is not None:  # started after the build, which it would slow down (one interpreter lock)
                threading.Thread(target=self._compute, args=self._job, daemon=True).start()
                self._job = None
            return self._unchanged if known == self._drawn else self._body


_CACHE = web.AppKey("cache", ViewCache)


async def _index(request: web.Request) -> web.Response:
    return web.Response(text=render_page(), content_type="text/html", headers=_HEADERS)


async def _api_view(request: web.Request) -> web.Response:
    cache = request.app[_CACHE]
    try:
        body = await asyncio.get_running_loop().run_in_executor(None, cache.get, request.query.get("known"))
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
    try:
        path = result_file(request.app[_CACHE].results_dir, name) if name in DOWNLOADS else None
    except ResultFileError as e:
        raise web.HTTPForbidden(text=f"not served: {e}") from None
    if path is None:
        raise web.HTTPNotFound(text=f"no such result file; the dashboard serves {list(DOWNLOADS)} when present")
    return web.FileResponse(path, headers={**_HEADERS, "Content-Disposition": f'attachment; filename="{name}"'})


async def _export(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in EXPORTS:
        raise web.HTTPNotFound(text=f"no such export; the dashboard exports {list(EXPORTS)}")
    try:
        body = await asyncio.get_running_loop().run_in_executor(None, trials_export, request.app[_CACHE].results_dir,
                                                                name)
    except UserError as e:  # a link out of the folder, a file of another schema
        raise web.HTTPForbidden(text=f"not exported: {e}") from None
    if body is None:
        raise web.HTTPNotFound(text="no trials.parquet yet")
    return web.Response(body=body, headers={**_HEADERS, "Content-Type": EXPORTS[name],
                                            "Content-Disposition": f'attachment; filename="{name}"'})


async def _audio(request: web.Request) -> web.StreamResponse:
    row = int(request.match_info["row"])
    try:
        found = await asyncio.get_running_loop().run_in_executor(None, audio_file, request.app[_CACHE].results_dir,
                                                                 row)
    except ResultFileError as e:
        raise web.HTTPForbidden(text=f"not served: {e}") from None
    if found is None:
        raise web.HTTPNotFound(text=f"no audio for row {row} of hypotheses.parquet")
    path, media_type = found
    return web.FileResponse(path, headers={**_HEADERS, "Content-Type": media_type})


def _split_host(header: str) -> Tuple[str, Optional[int]]:
    """(name, port) of a Host header (``name``, ``name:port``, ``[v6]``, ``[v6]:port``): port None when
    absent, -1 when not a number."""
    if header.startswith("["):
        name, _, rest = header[1:].partition("]")
    else:
        name, sep, rest = header.partition(":")
        rest = sep + rest
    if not rest:
        return name.lower(), None
    return name.lower(), int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else -1


def _local_address(request: web.Request) -> Optional[Tuple[str, int]]:
    """The address and port the request's connection arrived at (an IPv4 one as such on a dual-stack socket)."""
    sock = request.transport.get_extra_info("sockname") if request.transport is not None else None
    if not sock:
        return None
    address = ipaddress.ip_address(sock[0].split("%")[0])
    mapped = getattr(address, "ipv4_mapped", None)
    return str(mapped or address), sock[1]


def _host_check(bind_host: str) -> Callable:
    """Middleware that answers 421 to a request whose Host header does not name this server, at the
    port the request came in on: the bound address, the address the request arrived at, a loopback
    name, and (bound to every address: 0.0.0.0 or ::) the machine's host names."""
    names = {bind_host.lower()}
    if bind_host in ("0.0.0.0", "::"):
        names |= machine_names()

    @web.middleware
    async def check(request: web.Request, handler):
        local = _local_address(request)
        if local is None:  # the connection is gone
            raise web.HTTPMisdirectedRequest(text="no connection", headers=_HEADERS)
        address, bound_port = local
        header = request.headers.get(hdrs.HOST, "")
        name, port = _split_host(header)
        # An address literal cannot be a rebound name: the one the connection arrived at is always fine.
        if (port == bound_port or (port is None and bound_port == 80)) and (
                name in names or is_loopback(name) or name == address):
            return await handler(request)
        here = f"[{address}]" if ":" in address else address
        raise web.HTTPMisdirectedRequest(
            text=f"Host header {header[:100]!r} does not name this dashboard (DNS rebinding protection); open "
                 f"http://{here}:{bound_port}/ or, on this machine, http://localhost:{bound_port}/", headers=_HEADERS)

    return check


def make_app(results_dir: Path, host: str = "127.0.0.1", limits: ViewLimits = ViewLimits()) -> web.Application:
    """The dashboard app for ``results_dir`` bound to ``host``: GET routes only."""
    app = web.Application(middlewares=[_host_check(host)])
    app[_CACHE] = ViewCache(Path(results_dir).absolute(), limits)
    app.router.add_get("/", _index)
    app.router.add_get("/api/view", _api_view)
    app.router.add_get("/static/{name}", _static)
    app.router.add_get("/files/{name}", _result_file)
    app.router.add_get("/export/{name}", _export)
    app.router.add_get(r"/audio/{row:\d{1,9}}", _audio)
    return app


async def _serve_forever(results_dir: Path, host: str, port: int, limits: ViewLimits) -> None:
    runner = web.AppRunner(make_app(results_dir, host, limits), access_log=None)
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


def serve(results_dir: Path, host: str = "127.0.0.1", port: int = 8765, limits: ViewLimits = ViewLimits()) -> None:
    """Serve the dashboard until interrupted (Ctrl-C)."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise UserError(f"RESULTS_DIR {results_dir}: not a folder; pass a search's results folder "
                        "(results/<search name>/)")
    if not is_loopback(host):
        print(f"warning: --host {host} makes the dashboard reachable from other machines; it has no "
              "authentication (read-only)", flush=True)
    try:
        asyncio.run(_serve_forever(results_dir, host, port, limits))
    except KeyboardInterrupt:
        print("dashboard stopped", flush=True)

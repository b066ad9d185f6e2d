"""The HTTP side: a Starlette app with a hand-written page, JSON endpoints, and nothing readable but its own files.

Routes:

* ``GET /`` and ``/static/*`` -- the page (HTML, CSS, JS in this package; no CDN, no web font, no analytics);
* ``GET /api/info`` -- models, samples and limits;
* ``POST /api/upload?kind=image|video&name=FILE`` -- the raw file as an ``application/octet-stream`` body
  (size-limited while it streams);
* ``POST /api/sample`` ``{"name"}`` -- a bundled sample, as if uploaded;
* ``POST /api/image``, ``POST /api/chat`` -- queue a job and answer when it is done;
* ``POST /api/video`` -- queue a tracking job; ``GET /api/jobs/{id}`` -- its progress and result;
* ``GET /files/{id}/{name}`` -- an upload's or result's file (through :meth:`Store.file` only).

Errors are JSON ``{"error": message}`` with a 4xx/5xx status; the page shows the message.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from llm_bridge.app.config import AppConfig
from llm_bridge.app.engine import Engine
from llm_bridge.app.jobs import AppError, Job, JobQueue
from llm_bridge.app.models import ModelRegistry
from llm_bridge.app.samples import available_samples
from llm_bridge.app.storage import Store

STATIC_DIR = Path(__file__).resolve().parent / "static"
log = logging.getLogger("glee.app")
_MEDIA = {".png": "image/png", ".json": "application/json", ".txt": "text/plain; charset=utf-8", ".mp4": "video/mp4"}


@dataclass
class AppContext:
    """What the routes share: settings, models, store, queue and engine."""

    config: AppConfig
    registry: ModelRegistry
    store: Store
    queue: JobQueue
    engine: Engine

    def close(self) -> None:
        self.queue.close()
        self.store.close()


def _error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def read_body(request: Request, limit: int, what: str) -> bytes:
    """The request body, refusing more than ``limit`` bytes (by the header, and again while streaming).

    An over-long body announced by ``Content-Length`` is read and dropped up to twice the limit before the
    413 answer, so an ordinary client (which sends everything before reading) sees the message instead of a
    reset connection; anything beyond that is cut off.
    """
    header = request.headers.get("content-length")
    mb = limit / (1024 * 1024)
    too_big = AppError(f"the {what} is larger than this server's limit of {mb:.3g} MB; send a smaller one", 413)
    if header is not None:
        try:
            announced = int(header)
        except ValueError:
            raise AppError("malformed Content-Length header") from None
        if announced > limit:
            if announced <= 2 * limit:
                async for _ in request.stream():
                    pass
            raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


def require_type(request: Request, expected: str) -> None:
    """Only ``expected`` bodies: a form on another web site cannot send these types without a CORS preflight,
    which this server never grants, so pages elsewhere cannot make a local server run jobs."""
    given = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if given != expected:
        raise AppError(f"send the body as {expected} (got {given or 'no Content-Type'})", 415)


async def read_json(request: Request, ctx: AppContext) -> dict[str, Any]:
    require_type(request, "application/json")
    body = await read_body(request, ctx.config.max_json_bytes, "request")
    try:
        data = json.loads(body or b"{}")
    except ValueError:
        raise AppError("the request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise AppError("the request body must be a JSON object")
    return data


def _queue_info(job: Job) -> dict[str, Any]:
    return {"job": job.id, "position_at_submit": job.position_at_submit, **job.timing()}


def create_app(registry: ModelRegistry, config: AppConfig | None = None) -> Starlette:
    """The ASGI app.  ``app.state.ctx`` holds the :class:`AppContext` (closed at shutdown)."""
    config = config or AppConfig()
    store = Store(config.work_dir, config.retention_s)
    ctx = AppContext(config, registry, store, JobQueue(config.max_queue), Engine(config, registry, store))

    def guarded(handler: Any) -> Any:
        async def endpoint(request: Request) -> Response:
            try:
                return await handler(request)
            except AppError as exc:
                return _error(exc.message, exc.status)
        endpoint.__name__ = handler.__name__
        return endpoint

    async def index(request: Request) -> Response:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html; charset=utf-8",
                            headers={"Cache-Control": "no-store"})

    async def info(request: Request) -> Response:
        return JSONResponse({
            "models": registry.describe(),
            "samples": [{"name": s.name, "kind": s.kind, "label": s.label} for s in available_samples()],
            "limits": {"max_upload_bytes": config.max_upload_bytes, "max_video_seconds": config.max_video_seconds,
                       "max_video_frames": config.max_video_frames, "max_queue": config.max_queue},
            "queue": {"waiting": ctx.queue.waiting()},
        })

    async def upload(request: Request) -> Response:
        kind = request.query_params.get("kind", "image")
        name = (request.query_params.get("name") or "upload").replace("/", "_").replace("\\", "_")[:200]
        if kind not in ("image", "video"):
            raise AppError(f"kind must be 'image' or 'video', got {kind!r}")
        require_type(request, "application/octet-stream")
        data = await read_body(request, config.max_upload_bytes, "file")
        if not data:
            raise AppError(f"'{name}' is empty (0 bytes)", 415)
        save = ctx.engine.save_image_upload if kind == "image" else ctx.engine.save_video_upload
        return JSONResponse(await run_in_threadpool(save, data, name))

    async def sample(request: Request) -> Response:
        req = await read_json(request, ctx)
        return JSONResponse(await run_in_threadpool(ctx.engine.use_sample, req.get("name")))

    def submitter(kind: str, run: Any) -> Any:
        async def submit(request: Request) -> Response:
            req = await read_json(request, ctx)
            job = ctx.queue.submit(kind, lambda j: run(j, req))
            result = await asyncio.wrap_future(job.future)  # AppError from the job propagates
            return JSONResponse({**result, "queue": _queue_info(job)})
        submit.__name__ = f"submit_{kind}"
        return submit

    async def video(request: Request) -> Response:
        req = await read_json(request, ctx)
        job = ctx.queue.submit("video", lambda j: ctx.engine.run_video(j, req))
        return JSONResponse({"job": job.id, "position": ctx.queue.position(job)}, status_code=202)

    async def job_status(request: Request) -> Response:
        try:
            job = ctx.queue.get(request.path_params["job"])
        except KeyError as exc:
            raise AppError(str(exc.args[0]), 404) from None
        body: dict[str, Any] = {"job": job.id, "kind": job.kind, "status": job.status, "done": job.done,
                                "total": job.total, "message": job.message, "position": ctx.queue.position(job),
                                "queue": _queue_info(job)}
        if job.status == "done":
            body["result"] = job.result
        elif job.status == "error":
            body["error"] = job.error
            body["error_status"] = job.error_status
        return JSONResponse(body)

    async def files(request: Request) -> Response:
        try:
            path = store.file(request.path_params["item"], request.path_params["name"])
        except KeyError:
            return _error("not found", 404)
        headers = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
        if request.query_params.get("download"):
            headers["Content-Disposition"] = f'attachment; filename="{path.name}"'
        return FileResponse(path, media_type=_MEDIA.get(path.suffix.lower(), "application/octet-stream"),
                            headers=headers)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        ctx.close()

    routes = [
        Route("/", index),
        Route("/api/info", info),
        Route("/api/upload", guarded(upload), methods=["POST"]),
        Route("/api/sample", guarded(sample), methods=["POST"]),
        Route("/api/image", guarded(submitter("image", ctx.engine.run_image)), methods=["POST"]),
        Route("/api/chat", guarded(submitter("chat", ctx.engine.run_chat)), methods=["POST"]),
        Route("/api/video", guarded(video), methods=["POST"]),
        Route("/api/jobs/{job}", guarded(job_status)),
        Route("/files/{item}/{name}", files),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.ctx = ctx
    return app


# ---------------------------------------------------------------------------------------------------------
class RunningServer:
    """A uvicorn server on a background thread (tests, notebooks); ``stop()`` shuts it down."""

    def __init__(self, app: Starlette, host: str = "127.0.0.1", port: int = 0) -> None:
        import uvicorn

        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self.host, self.port = self._socket.getsockname()[:2]
        self.url = f"http://{self.host}:{self.port}"
        self.app = app
        self._server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True)
        self._thread.start()
        deadline = time.time() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.time() > deadline:
                raise RuntimeError("the app server did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(15)
        self._socket.close()

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

"""The FastAPI application of ``groupmood serve``: the page, the prediction API, health and bundle.

One process holds one recognizer, loaded once when the application starts (its lifespan) and
shared by every request. Inference runs in worker threads, never on the event loop, so the server
keeps answering (health, the page, refusals) while photos are labelled. At most ``workers``
requests are labelled at a time and at most ``queue`` more wait; a request beyond that gets 503
with ``Retry-After`` at once, so memory stays bounded: a waiting request holds at most
``max_upload_bytes`` of body, a running one also its decoded photos (at most :data:`KEEP_DECODED_BYTES`). Only requests whose
body has arrived count: a body still coming in takes no place in the queue, and one that has not
arrived within ``body_timeout_s`` is answered 408, so stalled clients cannot lock others out.

Uploads are read into memory (never spooled to a temporary file) up to the upload limit and
decoded from memory (:func:`groupmood.images.load_photo_bytes`: the command line's decoding, with
content sniffing, EXIF, the pixel-count guard read from the header, and the reduced decoding
``predict`` uses, :meth:`~groupmood.pipeline.GroupEmotionRecognizer.decode_short_side`), so
nothing of a photo is ever on disk, whatever way the server stops. Each record is the one
``predict --format jsonl`` writes for the photo: ``{"file": NAME, **GroupResult.to_dict()}``,
with the uploaded file's base name as ``NAME``; its schema is :class:`~groupmood.serve.schemas.PhotoRecord`
(``/openapi.json``).

A local server must not be driven by the pages of other sites: a request whose ``Host`` is not
this machine's (``localhost``, a loopback address, or a name given in ``allowed_hosts``; DNS
rebinding) is refused 400, and a POST from a page of another origin (its ``Origin`` header) 403.
"""
from __future__ import annotations

import importlib.metadata
import ipaddress
import json
import math
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import anyio
import anyio.to_thread
import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

from ..errors import ImageLoadError
from ..images import DEFAULT_MAX_PIXELS, Photo, load_photo_bytes
from ..labels import GROUP_CLASSES
from ..pipeline import Bundle, GroupEmotionRecognizer, GroupResult
from ..report import LABEL_COLOURS, REPORT_CSS
from .schemas import Health, PredictResponse

__all__ = ["ServeLimits", "create_app", "page_html", "get_labeller"]

#: The multipart field that carries the photos.
FILES_FIELD = "files"

#: The page may load nothing from elsewhere: scripts and styles are inline, photos are local blobs.
_CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' blob: data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")

Labeller = Callable[[Photo | np.ndarray], GroupResult]

#: Decoded photos one request keeps between its check and its labelling (bytes of pixels).
KEEP_DECODED_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class ServeLimits:
    """What one server accepts: body size, pixels per photo, photos per request, concurrency.

    ``workers`` requests are labelled at a time, ``queue`` more may wait; ``retry_after_s`` is the
    ``Retry-After`` of a 503 answer when both are full. A request body must arrive within
    ``body_timeout_s`` seconds (408 otherwise).

    >>> ServeLimits(max_files=4, workers=2).max_files
    4
    """

    max_upload_bytes: int = 20 * 1024 * 1024
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_files: int = 16
    workers: int = 1
    queue: int = 8
    retry_after_s: int = 5
    body_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        for name in ("max_upload_bytes", "max_pixels", "max_files", "workers", "retry_after_s"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if int(self.queue) < 0:
            raise ValueError(f"queue must be 0 or more, got {self.queue}")
        if not (math.isfinite(self.body_timeout_s) and self.body_timeout_s > 0):
            raise ValueError(f"body_timeout_s must be a number of seconds above 0, got {self.body_timeout_s}")


class ApiError(Exception):
    """A refusal: HTTP status, a sentence saying why, and per-file details where files were at fault."""

    def __init__(self, status: int, message: str, files: Sequence[dict[str, Any]] = (),
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.files = list(files)
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        body: dict[str, Any] = {"error": self.message, "status": self.status}
        if self.files:
            body["files"] = self.files
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def _mb(n: int) -> str:
    return f"{n / (1024 * 1024):.3g} MB"


def refusal_status(reason: str) -> int:
    """The HTTP status of an image the loader refused.

    Args:
        reason: the :class:`~groupmood.errors.ImageLoadError`'s reason (see :mod:`groupmood.images`).

    Returns:
        Too many pixels 413, empty 400, not an image (or an unreadable format) 415, anything else the
        loader could not decode (truncated, corrupt, NaN pixels) 422.

    >>> refusal_status("image too large: 20000 x 20000"), refusal_status("empty file (0 bytes)")
    (413, 400)
    """
    r = reason.lower()
    if r.startswith("image too large"):
        return 413
    if r.startswith("empty file"):
        return 400
    if r.startswith("not an image") or "cannot be read here" in r:
        return 415
    return 422


def upload_name(filename: str | None, k: int) -> str:
    """The name a photo is known by in records and messages.

    Args:
        filename: the uploaded file's name, as the client sent it (any folder or drive dropped).
        k: the photo's position in the request, naming a photo sent without a name.

    Returns:
        The base name of the uploaded file, or ``photo K+1``.

    >>> upload_name("holidays/2024/party.jpg", 0), upload_name(None, 2)
    ('party.jpg', 'photo 3')
    """
    name = PurePosixPath((filename or "").replace("\\", "/")).name.strip()
    return name or f"photo {k + 1}"


class _InMemoryParser(MultiPartParser):
    """Starlette's multipart parser with every part kept in memory (the body is already bounded)."""

    def __init__(self, *args: Any, spool_max_size: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.spool_max_size = spool_max_size


async def read_uploads(request: Request, limits: ServeLimits) -> list[tuple[str, bytes]]:
    """The (name, bytes) of each file under ``files`` in a multipart body, refused above the limits."""
    ctype = request.headers.get("content-type", "")
    if not ctype.lower().startswith("multipart/form-data"):
        raise ApiError(415, f"send the photos as multipart/form-data, one or more files under the field name "
                            f"'{FILES_FIELD}' (got Content-Type {ctype or 'none'!r})")
    too_large = (f"upload too large: above the limit of {_mb(limits.max_upload_bytes)} per request "
                 "(groupmood serve --max-upload-mb); send smaller or fewer photos")
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limits.max_upload_bytes:
        raise ApiError(413, too_large)

    async def bounded() -> AsyncIterator[bytes]:
        seen = 0
        async for chunk in request.stream():
            seen += len(chunk)
            if seen > limits.max_upload_bytes:
                raise ApiError(413, too_large)
            yield chunk

    parser = _InMemoryParser(request.headers, bounded(), max_files=limits.max_files, max_fields=limits.max_files,
                             spool_max_size=limits.max_upload_bytes + 1)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        too_many = exc.message.startswith("Too many")
        raise ApiError(400, f"malformed multipart body: {exc.message}"
                            + (f" (at most {limits.max_files} files per request)" if too_many else "")) from None
    try:
        parts = form.getlist(FILES_FIELD)
        if not parts:
            raise ApiError(400, f"no photo in the request: send one or more files under the field name "
                                f"'{FILES_FIELD}'")
        out = []
        for k, part in enumerate(parts):
            if not isinstance(part, UploadFile):
                raise ApiError(400, f"field '{FILES_FIELD}' number {k + 1} is text, not a file; send the photos "
                                    "as files")
            out.append((upload_name(part.filename, k), await part.read()))
        return out
    finally:
        await form.close()


def label_uploads(uploads: Sequence[tuple[str, bytes]], labeller: Labeller, max_pixels: int,
                  min_short_side: int | None = None) -> list[dict]:
    """The ``predict`` record of each upload, or an :class:`ApiError` naming every file refused.

    Runs in a worker thread. Photos are decoded from memory as ``predict`` decodes files (at the
    reduced size that keeps ``min_short_side`` pixels, the recognizer's
    :meth:`~groupmood.pipeline.GroupEmotionRecognizer.decode_short_side`). Every photo is decoded
    before any is labelled, so a refusal costs no inference; the decoded photos are kept for labelling
    up to :data:`KEEP_DECODED_BYTES` (the rest, on a request of very large photos, are decoded again
    when their turn comes).
    """
    refused = []
    kept: dict[int, Photo] = {}
    held = 0
    for k, (name, data) in enumerate(uploads):
        try:
            photo = load_photo_bytes(data, name, max_pixels, min_short_side)
        except ImageLoadError as exc:
            refused.append({"file": name, "error": exc.reason, "status": refusal_status(exc.reason)})
            continue
        if held + photo.pixels.nbytes <= KEEP_DECODED_BYTES:
            kept[k] = photo
            held += photo.pixels.nbytes
    if refused:
        first = refused[0]
        message = (f"{first['file']}: {first['error']}" if len(refused) == 1 else
                   f"{len(refused)} of {len(uploads)} photos refused, none labelled; first: "
                   f"{first['file']}: {first['error']}")
        raise ApiError(first["status"], message, refused)
    records = []
    for k, (name, data) in enumerate(uploads):
        photo = kept.pop(k, None) or load_photo_bytes(data, name, max_pixels, min_short_side)
        records.append({"file": name, **labeller(photo).to_dict()})
    return records


def get_labeller(request: Request) -> Labeller:
    """The loaded recognizer's one-photo call (a dependency, so tests can slow it down)."""
    recognizer: GroupEmotionRecognizer = request.app.state.recognizer
    return recognizer.predict_one


def page_html(limits: ServeLimits) -> str:
    """The page at ``/``: one self-contained HTML file, the report's style and colours inlined.

    Args:
        limits: the server's limits the page checks before it uploads (size, number of files).

    Returns:
        The HTML text.

    >>> page_html(ServeLimits()).startswith("<!doctype html>")
    True
    """
    template = resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")
    colours = {c: "#%02x%02x%02x" % rgb for c, rgb in LABEL_COLOURS.items()}
    config = {"colours": colours, "classes": list(GROUP_CLASSES), "maxUploadBytes": limits.max_upload_bytes,
              "maxFiles": limits.max_files}
    return (template.replace("/*REPORT_CSS*/", REPORT_CSS)
            .replace("/*CONFIG*/{}", json.dumps(config).replace("</", "<\\/")))


def _versions() -> dict[str, str]:
    out = {}
    for pkg in ("groupmood", "torch", "torchvision", "fastapi", "starlette", "uvicorn"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _bundle_summary(spec: Bundle) -> dict[str, Any]:
    """What ``/v1/bundle`` shows of a bundle: branches (model file names), weights, fallback, what they were chosen on."""
    branches = [{**b.to_dict(), "model": b.model.name} for b in spec.branches]
    fusion = {k: (Path(v).name if k in ("model", "gate") else v) for k, v in spec.fusion.to_dict().items()}
    return jsonable_encoder({"name": spec.name, "description": spec.description, "classes": list(GROUP_CLASSES),
                             "branches": branches, "weights": dict(spec.weights), "fallback": list(spec.fallback),
                             "fusion": fusion, "detector": spec.detector_overrides(), "chosen_on": dict(spec.chosen_on),
                             "path": str(spec.path)})


def host_name(host: str) -> str:
    """The host name of a ``Host`` header or an origin's network location.

    Args:
        host: ``name[:port]`` or ``[IPv6][:port]``.

    Returns:
        The name without the port, lower case.

    >>> host_name("LocalHost:8000"), host_name("[::1]:8000")
    ('localhost', '::1')
    """
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def is_local_host(name: str) -> bool:
    """Whether a host name is this machine.

    Args:
        name: a host name without port (:func:`host_name`).

    Returns:
        True for ``localhost`` (and ``*.localhost``) or a loopback address.

    >>> is_local_host("127.0.0.1"), is_local_host("example.com")
    (True, False)
    """
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class HostGuard:
    """ASGI middleware: refuse requests for other host names (DNS rebinding) and POSTs from other origins.

    ``allowed`` adds host names to this machine's own (``localhost``, loopback addresses); ``"*"``
    accepts any Host (a deliberate public server). A request without an ``Origin`` header (curl,
    scripts) is not cross-origin; a browser sends one with every POST.
    """

    def __init__(self, app: Any, allowed: Sequence[str] = ()) -> None:
        self.app = app
        self.allowed = {host_name(h) for h in allowed}

    def _host_ok(self, host: str) -> bool:
        name = host_name(host)
        return bool(name) and ("*" in self.allowed or name in self.allowed or is_local_host(name))

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host = headers.get("host", "")
        refusal = None
        if not self._host_ok(host):
            refusal = ApiError(400, f"Host {host!r} is not this server: it answers requests for localhost and "
                                    "loopback addresses only, so that pages of other sites cannot use it; to serve "
                                    "under another name, start it with --allow-host NAME")
        elif scope["method"] not in ("GET", "HEAD", "OPTIONS"):
            origin = headers.get("origin")
            cross = headers.get("sec-fetch-site") == "cross-site"
            if cross or (origin is not None and urlsplit(origin).netloc.lower() != host.strip().lower()):
                refusal = ApiError(403, f"cross-origin request refused (Origin {origin or 'of another site'}): "
                                        "only this server's own page, or a client that sends no Origin (curl, "
                                        "scripts), may send photos")
        if refusal is not None:
            await refusal.response()(scope, receive, send)
            return
        await self.app(scope, receive, send)


def create_app(load: Callable[[], GroupEmotionRecognizer], bundle: str | Path,
               limits: ServeLimits | None = None, allowed_hosts: Sequence[str] = ()) -> FastAPI:
    """The FastAPI application of ``groupmood serve``.

    Args:
        load: builds the recognizer, once, in a worker thread when the application starts (a server
            with a bad bundle fails to start, it does not answer errors later).
        bundle: the bundle YAML ``load`` reads, shown by ``/v1/health`` and ``/v1/bundle``.
        limits: what the server accepts; :class:`ServeLimits` defaults.
        allowed_hosts: host names accepted beside this machine's own (:class:`HostGuard`).

    Returns:
        The application, to run with uvicorn; nothing is loaded until it starts.

    >>> from groupmood.pipeline import GroupEmotionRecognizer, bundle_path
    >>> path = bundle_path("default")
    >>> app = create_app(lambda: GroupEmotionRecognizer.from_bundle(path), path)
    >>> sorted(route.path for route in app.routes if route.path.startswith("/v1"))
    ['/v1/bundle', '/v1/health', '/v1/predict']
    """
    limits = limits or ServeLimits()
    bundle_path = Path(bundle)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.recognizer = await anyio.to_thread.run_sync(load)
        app.state.bundle = _bundle_summary(Bundle.load(bundle_path))
        app.state.limiter = anyio.CapacityLimiter(limits.workers)
        app.state.in_flight = 0
        app.state.receiving = 0
        try:
            yield
        finally:
            app.state.recognizer = None

    app = FastAPI(title="groupmood", summary="Group emotion (Negative / Neutral / Positive) of photos, with "
                  "per-branch and per-face evidence", version=_versions()["groupmood"], lifespan=lifespan,
                  docs_url=None, redoc_url=None)  # their pages load scripts from a CDN; /openapi.json stays
    app.state.recognizer = None
    app.state.limits = limits
    app.add_middleware(HostGuard, allowed=tuple(allowed_hosts))
    page = page_html(limits)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = str(exc.detail)
        if exc.status_code == 405:
            allowed = (exc.headers or {}).get("Allow", "")
            message = f"method {request.method} is not allowed on {request.url.path}; use {allowed or 'another'}"
        elif exc.status_code == 404:
            message = f"nothing at {request.url.path}; see / for the page and /openapi.json for the API"
        return ApiError(exc.status_code, message, headers=dict(exc.headers or {})).response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return ApiError(500, f"internal error ({type(exc).__name__}: {exc}); the server log has the details"
                        ).response()

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Content-Security-Policy": _CSP, "X-Content-Type-Options": "nosniff"})

    @app.get("/v1/health", response_model=Health)
    async def health(request: Request) -> dict[str, Any]:
        """Whether the models are loaded, package versions, the bundle, the limits and how busy it is."""
        rec: GroupEmotionRecognizer | None = request.app.state.recognizer
        return {"status": "ok" if rec is not None else "loading", "models_loaded": rec is not None,
                "device": str(rec.device) if rec is not None else None,
                "branches": list(rec.branches) if rec is not None else [],
                "bundle": str(bundle_path.resolve()), "versions": _versions(), "limits": asdict(limits),
                "in_flight": getattr(request.app.state, "in_flight", 0),
                "receiving": getattr(request.app.state, "receiving", 0)}

    @app.get("/v1/bundle")
    async def bundle_info(request: Request) -> dict[str, Any]:
        """The bundle's branches, fusion weights and what they were chosen on."""
        return request.app.state.bundle

    @app.post("/v1/predict", response_model=PredictResponse, response_model_exclude_none=True)
    async def predict(request: Request, labeller: Labeller = Depends(get_labeller)) -> dict[str, Any]:
        """Label each photo sent as multipart ``files``: ``{"records": [one predict record per photo]}``."""
        state = request.app.state
        refuse_if_busy(state)  # before the body comes: a full queue costs the client no upload
        state.receiving += 1
        try:
            with anyio.fail_after(limits.body_timeout_s):
                uploads = await read_uploads(request, limits)
        except TimeoutError:
            raise ApiError(408, f"upload timed out: the request body did not arrive within "
                                f"{limits.body_timeout_s:g} s (groupmood serve --body-timeout); send it again "
                                "over a faster connection, or fewer photos at a time") from None
        finally:
            state.receiving -= 1
        refuse_if_busy(state)  # only requests whose body has arrived wait in the queue
        state.in_flight += 1
        try:
            records = await anyio.to_thread.run_sync(label_uploads, uploads, labeller, limits.max_pixels,
                                                     state.recognizer.decode_short_side(), limiter=state.limiter)
        finally:
            state.in_flight -= 1
        return {"records": records}

    def refuse_if_busy(state: Any) -> None:
        if state.in_flight >= limits.workers + limits.queue:
            raise ApiError(503, f"busy: {state.in_flight} requests are being labelled or waiting; try again in "
                                f"{limits.retry_after_s} s", headers={"Retry-After": str(limits.retry_after_s)})

    return app

"""``groupmood serve``: the web page and HTTP API (see :mod:`groupmood.serve`) on a local port."""
from __future__ import annotations

import ipaddress
import math
import socket
import time

import click

from ..images import DEFAULT_MAX_PIXELS
from ..pipeline import bundle_path
from .common import check_device
from .predict import build_recognizer


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _allowed_hosts(host: str, extra: tuple[str, ...]) -> list[str]:
    """The host names answered beside localhost: ``--allow-host`` names and the ``--host`` address itself
    (unless it is a wildcard such as 0.0.0.0)."""
    names = list(extra)
    try:
        wildcard = ipaddress.ip_address(host).is_unspecified
    except ValueError:
        wildcard = False
    if not wildcard and not _is_loopback(host):
        names.append(host)
    return names


def _listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port``, or a usage error saying why it cannot be."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise click.BadParameter(f"{host!r} is not an address of this machine ({exc.strerror})",
                                 param_hint="--host") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as exc:
        sock.close()
        raise click.UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; choose another --port "
                               "(or --port 0 for a free one)") from None
    return sock


def _upload_mb(ctx: click.Context, param: click.Parameter, value: float) -> float:
    """``--max-upload-mb``: a finite number of MB that is at least one byte."""
    if not math.isfinite(value) or value * 1024 * 1024 < 1:
        raise click.BadParameter(f"{value} is not a size in MB of at least one byte; give e.g. 20 (or 0.5)")
    return value


def _seconds(ctx: click.Context, param: click.Parameter, value: float) -> float:
    """A finite number of seconds above 0."""
    if not math.isfinite(value) or value <= 0:
        raise click.BadParameter(f"{value} is not a number of seconds above 0; give e.g. 30")
    return value


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. The default answers this machine only; 0.0.0.0 answers every network.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="Port (0: a free one).")
@click.option("--bundle", default=None, type=click.Path(dir_okay=False),
              help="Bundle YAML (models + fusion weights). Default: the shipped groupmood/assets/bundle.yaml.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1),
              help="Requests labelled at a time (threads sharing one copy of the models).")
@click.option("--queue", default=8, show_default=True, type=click.IntRange(0),
              help="Requests that may wait beyond those being labelled; more get 503 with Retry-After.")
@click.option("--max-upload-mb", default=20.0, show_default=True, type=float, callback=_upload_mb,
              help="Largest request body (all its photos together), in MB.")
@click.option("--body-timeout", "body_timeout", default=30.0, show_default=True, type=float, callback=_seconds,
              help="Seconds a request body may take to arrive; a slower (or stalled) upload gets 408.")
@click.option("--allow-host", "allow_hosts", multiple=True, metavar="NAME",
              help="Also answer requests for this host name (repeatable; '*' for any). By default only "
                   "localhost and loopback addresses are answered, so that pages of other sites cannot use the "
                   "server (DNS rebinding).")
@click.option("--max-pixels", default=DEFAULT_MAX_PIXELS, show_default=True, type=click.IntRange(1),
              help="Refuse photos larger than this (decompression-bomb guard), read from the header.")
@click.option("--max-files", default=16, show_default=True, type=click.IntRange(1), help="Most photos per request.")
@click.option("--device", default="cpu", show_default=True, help="torch device, e.g. cpu or cuda:0.")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]), help="Server log level.")
def serve_cmd(host: str, port: int, bundle: str | None, workers: int, queue: int, max_upload_mb: float,
              body_timeout: float, allow_hosts: tuple[str, ...], max_pixels: int, max_files: int, device: str,
              log_level: str) -> int:
    """Serve the web page (drop photos, see the group's mood and each face's evidence) and the HTTP API.

    GET / is the page; POST /v1/predict takes photos as multipart 'files' and answers the records of
    predict --format jsonl; GET /v1/health and GET /v1/bundle describe the server. The models are
    loaded once, before the port opens. Ctrl-C stops it.
    """
    import uvicorn

    from ..runtime.session import cpu_count, set_intra_op_threads
    from ..serve import ServeLimits, create_app

    check_device(device)
    limits = ServeLimits(max_upload_bytes=int(max_upload_mb * 1024 * 1024), max_pixels=max_pixels,
                         max_files=max_files, workers=workers, queue=queue, body_timeout_s=body_timeout)
    allowed = _allowed_hosts(host, allow_hosts)
    bundle_file = bundle_path(bundle)
    start = time.perf_counter()
    # one photo per request: every CPU in each ONNX Runtime session (predict's default is one photo per CPU)
    set_intra_op_threads(cpu_count())
    recognizer = build_recognizer(bundle, device)
    sock = _listen(host, port)
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    click.echo(f"groupmood serve: models loaded in {time.perf_counter() - start:.1f} s; "
               f"open http://{shown}:{bound_port}/ (Ctrl-C stops)", err=True)
    if not _is_loopback(host):
        click.echo(f"note: listening on {host}: anyone who can reach this machine can send photos to it", err=True)
        if "*" not in allowed:
            click.echo(f"note: requests are answered for the host names localhost, loopback addresses"
                       f"{', ' + ', '.join(allowed) if allowed else ''}; add --allow-host NAME for the name others "
                       "use to reach this machine", err=True)
    app = create_app(lambda: recognizer, bundle_file, limits, allowed)
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=10))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    return 0 if server.started else 1

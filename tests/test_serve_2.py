"""``groupmood serve`` against stalled clients, other sites' pages, odd photos and odd options.

The slow-client case needs the real server (uvicorn on a free loopback port, in a thread): the test
client hands the application whole bodies. The rest goes through FastAPI's test client. The
recognizer is ``test_pipeline``'s tiny random bundle.
"""
from __future__ import annotations

import io
import json
import socket
import time
import warnings
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image

from groupmood.cli import main
from groupmood.cli.predict import build_recognizer
from groupmood.images import load_photo
from groupmood.serve import ServeLimits, create_app
from groupmood.serve.app import get_labeller
from serving import LOCAL, files, running_server
from test_pipeline import _bundle

with warnings.catch_warnings():  # Starlette 1.x asks for httpx2 but still runs its test client on httpx
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient



def _jpeg(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    return buf.getvalue()




@pytest.fixture(scope="module")
def client(tiny) -> Iterator[TestClient]:
    bundle, rec = tiny
    with TestClient(create_app(lambda: rec, bundle, ServeLimits(max_files=4)), base_url=LOCAL) as c:
        yield c


# --------------------------------------------------------------------------- 6. stalled uploads

@pytest.fixture
def real_server(tiny) -> Iterator[tuple[str, int]]:
    """The real server (tiny bundle, a body timeout of 1.5 s, one worker and a queue of 2) on a loopback port."""
    bundle, rec = tiny
    with running_server(create_app(lambda: rec, bundle, ServeLimits(workers=1, queue=2, body_timeout_s=1.5))) as hp:
        yield hp


def _stalled_upload(host: str, port: int) -> socket.socket:
    """A POST that promises 100000 bytes of body and sends 10."""
    s = socket.create_connection((host, port), timeout=10)
    s.sendall(f"POST /v1/predict HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: multipart/form-data; "
              f"boundary=b\r\nContent-Length: 100000\r\n\r\n--b\r\nxxxx".encode())
    return s


def _answer(s: socket.socket) -> tuple[str, dict]:
    """The status line and JSON body of the answer on a raw connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(4096)
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = int(next(ln.split(":", 1)[1] for ln in lines if ln.lower().startswith("content-length:")))
    while len(body) < length:
        body += s.recv(4096)
    return lines[0], json.loads(body)


@pytest.mark.integration
def test_stalled_uploads_neither_block_others_nor_stay_for_ever(real_server, astronaut):
    host, port = real_server
    stalled = [_stalled_upload(host, port) for _ in range(9)]
    try:
        time.sleep(0.3)
        start = time.monotonic()
        answer = httpx.post(f"http://{host}:{port}/v1/predict", files=files(("a.jpg", _jpeg(astronaut))),
                            timeout=30)
        assert answer.status_code == 200, answer.text  # the nine stalled bodies take no place in the queue
        assert answer.json()["records"][0]["file"] == "a.jpg" and time.monotonic() - start < 10
        health = httpx.get(f"http://{host}:{port}/v1/health", timeout=10).json()
        assert health["in_flight"] == 0 and health["receiving"] == 9
        for s in stalled:  # each is answered 408 once the body timeout has passed
            status, body = _answer(s)
            assert status.startswith("HTTP/1.1 408"), status
            assert "upload timed out" in body["error"] and "--body-timeout" in body["error"]
        assert httpx.get(f"http://{host}:{port}/v1/health", timeout=10).json()["receiving"] == 0
    finally:
        for s in stalled:
            s.close()


# --------------------------------------------------------------------------- 5, 7. decoding

def test_a_one_pixel_strip_is_labelled(client, monkeypatch):
    resize = Image.Image.resize

    def guarded(self: Image.Image, size: tuple[int, int], *args, **kwargs) -> Image.Image:
        if size[0] * size[1] > 10_000_000:  # what the old whole-image input asked for: 256 x 20480000
            raise MemoryError("test guard: resize to more than 10 megapixels")
        return resize(self, size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", guarded)
    answer = client.post("/v1/predict", files=files(("strip.png", _png(np.full((1, 80000, 3), 120, np.uint8)))))
    assert answer.status_code == 200, answer.text
    record = answer.json()["records"][0]
    assert (record["width"], record["height"]) == (80000, 1) and record["no_face"]


def test_serve_decodes_a_large_photo_as_predict_does(tmp_path, astronaut, one_thread):
    bundle = _bundle(tmp_path / "b", detector={"min_face_frac": 0.25})  # the models need 448 px: 1/4 of 1800
    big = np.asarray(Image.fromarray(astronaut).resize((1800, 1800), Image.BILINEAR))
    photo = tmp_path / "big.jpg"
    photo.write_bytes(_jpeg(big))
    out = tmp_path / "p.jsonl"
    assert main(["predict", str(photo), "--bundle", str(bundle), "--backend", "torch", "-o", str(out),
                 "--no-progress"]) == 0
    expected = json.loads(out.read_text(encoding="utf-8"))
    rec = build_recognizer(bundle, "cpu", backend="torch")
    shapes = []

    def watching(image):
        shapes.append(np.asarray(getattr(image, "pixels", image)).shape)
        return rec.predict_one(image)

    app = create_app(lambda: rec, bundle)
    app.dependency_overrides[get_labeller] = lambda: watching
    with TestClient(app, base_url=LOCAL) as c:
        answer = c.post("/v1/predict", files=files(("big.jpg", photo.read_bytes())))
    assert answer.status_code == 200, answer.text
    assert shapes == [load_photo(photo, min_short_side=rec.decode_short_side()).pixels.shape] == [(450, 450, 3)]
    assert answer.json() == {"records": [{**expected, "file": "big.jpg"}]}


# --------------------------------------------------------------------------- 9. other sites

def test_other_host_names_and_cross_origin_posts_are_refused(tiny, client, astronaut):
    for host in ("attacker.example", "attacker.example:8000", "127.0.0.1.attacker.example", ""):
        answer = client.get("/v1/health", headers={"host": host})
        assert answer.status_code == 400, host
        assert "is not this server" in answer.json()["error"] and "--allow-host" in answer.json()["error"]
        assert "bundle" not in answer.json()
    for host in ("localhost:8000", "127.0.0.1", "[::1]:8000", "127.0.0.2:9"):
        assert client.get("/v1/health", headers={"host": host}).status_code == 200, host
    photo = files(("a.jpg", _jpeg(astronaut)))
    evil = client.post("/v1/predict", files=photo, headers={"origin": "http://attacker.example"})
    assert evil.status_code == 403 and "cross-origin request refused" in evil.json()["error"]
    other_port = client.post("/v1/predict", files=photo, headers={"origin": "http://127.0.0.1:3000"})
    assert other_port.status_code == 403
    fetch_meta = client.post("/v1/predict", files=photo, headers={"sec-fetch-site": "cross-site"})
    assert fetch_meta.status_code == 403
    assert client.post("/v1/predict", files=photo, headers={"origin": LOCAL}).status_code == 200  # its own page
    assert client.post("/v1/predict", files=photo).status_code == 200  # curl sends no Origin
    bundle, rec = tiny
    with TestClient(create_app(lambda: rec, bundle, allowed_hosts=["photos.lan"]), base_url="http://photos.lan") as c:
        assert c.get("/v1/health").status_code == 200
        assert c.get("/v1/health", headers={"host": "other.lan"}).status_code == 400
    with TestClient(create_app(lambda: rec, bundle, allowed_hosts=["*"]), base_url="http://anything.example") as c:
        assert c.get("/v1/health").status_code == 200


# --------------------------------------------------------------------------- 18, 20. messages

@pytest.mark.parametrize("args, words", [
    (["--max-upload-mb", "nan"], "is not a size in MB"),
    (["--max-upload-mb", "0.0000001"], "at least one byte"),
    (["--max-upload-mb", "inf"], "is not a size in MB"),
    (["--body-timeout", "0"], "is not a number of seconds above 0"),
])
def test_serve_options_that_make_no_sense_are_one_line(args, words, capsys):
    assert main(["serve", *args]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err


def test_multipart_refusals_say_their_own_reason(client):
    missing = client.post("/v1/predict", content=b"junk", headers={"content-type": "multipart/form-data"})
    assert missing.status_code == 400
    assert missing.json()["error"] == "malformed multipart body: Missing boundary in multipart."
    many = client.post("/v1/predict", files=files(*[(f"{k}.jpg", b"x") for k in range(5)]))
    assert many.status_code == 400 and many.json()["error"].endswith("(at most 4 files per request)")

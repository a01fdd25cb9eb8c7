"""``groupmood serve``'s API through FastAPI's test client: records, refusals, the queue, the page.

Tiny random models (``test_pipeline._bundle``) keep most tests fast where the exact numbers do not
matter; the shipped default bundle checks that a record from the API equals ``predict``'s record
for the same real photo. Every refusal is checked with its status code and its message.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import struct
import sys
import tempfile
import threading
import time
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from groupmood.cli import main
from groupmood.cli.predict import build_recognizer
from groupmood.cli.serve import serve_cmd
from groupmood.labels import GROUP_CLASSES
from groupmood.pipeline import default_bundle_path
from groupmood.serve import ServeLimits, create_app
from groupmood.serve.app import get_labeller
from serving import LOCAL, files
from test_pipeline import _bundle

with warnings.catch_warnings():  # Starlette 1.x asks for httpx2 but still runs its test client on httpx
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

LIMITS = ServeLimits(max_upload_bytes=1024 * 1024, max_pixels=4_000_000, max_files=4)


def _jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    return buf.getvalue()


def _png_claiming(width: int, height: int) -> bytes:
    """A 100-byte PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))




@pytest.fixture(scope="module")
def client(tiny):
    bundle, rec = tiny
    with TestClient(create_app(lambda: rec, bundle, LIMITS), base_url=LOCAL) as c:
        yield c


@pytest.fixture(scope="module")
def photos(astronaut, coffee) -> dict[str, bytes]:
    return {"astronaut.jpg": _jpeg(astronaut), "coffee.png": _png(coffee)}


# --------------------------------------------------------------------------- records

@pytest.mark.slow
@pytest.mark.integration
def test_api_record_equals_predict_record_on_a_real_group_photo(tmp_path, monkeypatch):
    from groupmood.samples import sample_path

    shutil.copy(sample_path("group"), tmp_path / "group.jpg")
    monkeypatch.chdir(tmp_path)
    assert main(["predict", "group.jpg", "-o", "pred.jsonl", "--no-progress"]) == 0
    expected = json.loads((tmp_path / "pred.jsonl").read_text(encoding="utf-8"))
    app = create_app(lambda: build_recognizer(None, "cpu"), default_bundle_path())
    with TestClient(app, base_url=LOCAL) as c:
        answer = c.post("/v1/predict", files=files(("group.jpg", (tmp_path / "group.jpg").read_bytes())))
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"records": [expected]}  # same keys, same numbers
        assert expected["n_faces"] == 5 and len(expected["faces"]) == 5
        bundle = c.get("/v1/bundle").json()
        health = c.get("/v1/health").json()
    assert set(expected["branches"]) <= {b["name"] for b in bundle["branches"]}  # weight-0 branches may not run
    crowd, crowd_weights = expected["crowd"], bundle["fusion"]["crowd"]["weights"]  # the regimes, mixed by the gate
    for b, r in expected["branches"].items():
        mixed = (1 - crowd) * bundle["weights"].get(b, 0.0) + crowd * crowd_weights.get(b, 0.0)
        assert r["weight"] == pytest.approx(mixed, abs=1e-4)  # the record's crowd is rounded to 4 digits
    assert bundle["chosen_on"] and bundle["path"] == str(default_bundle_path().resolve())
    assert bundle["fallback"] == ["global"]  # labels the photos with fewer than two faces
    assert health["models_loaded"] and health["bundle"] == str(default_bundle_path().resolve())


def test_records_follow_the_published_schema_and_each_upload_is_decoded_once(client, photos, monkeypatch):
    """/openapi.json names the record's schema; the answer validates against it; each photo is decoded once."""
    import groupmood.serve.app as app_module
    from groupmood.serve.schemas import PredictResponse

    schema = client.get("/openapi.json").json()
    assert {"PhotoRecord", "BranchRecord", "FaceRecord", "Probabilities"} <= set(schema["components"]["schemas"])
    decoded = []
    real = app_module.load_photo_bytes

    def counting(data, name, *args):
        decoded.append(name)
        return real(data, name, *args)

    monkeypatch.setattr(app_module, "load_photo_bytes", counting)
    answer = client.post("/v1/predict", files=files(*photos.items()))
    assert answer.status_code == 200, answer.text
    assert sorted(decoded) == sorted(photos)  # once each
    parsed = PredictResponse.model_validate(answer.json())
    assert [r.file for r in parsed.records] == list(photos)


def test_photo_without_a_face_and_several_photos_in_one_request(client, photos):
    answer = client.post("/v1/predict", files=files(*photos.items()))
    assert answer.status_code == 200, answer.text
    astro, cof = answer.json()["records"]
    assert astro["file"] == "astronaut.jpg" and astro["n_faces"] == 1 and not astro["no_face"]
    assert cof["file"] == "coffee.png" and cof["no_face"] and cof["n_faces"] == 0 and cof["faces"] == []
    assert cof["label"] in GROUP_CLASSES and not cof["branches"]["aligned"]["spoke"]
    assert cof["branches"]["global"]["effective_weight"] == 1.0
    for rec in (astro, cof):
        assert set(rec["probs"]) == set(GROUP_CLASSES) and abs(sum(rec["probs"].values()) - 1) < 1e-3


def test_upload_name_is_the_base_name_only(client, photos):
    answer = client.post("/v1/predict", files=files(("../../etc/x\\y/face.jpg", photos["astronaut.jpg"])))
    assert answer.status_code == 200 and answer.json()["records"][0]["file"] == "face.jpg"


def test_health_and_bundle(client, tiny):
    bundle, _ = tiny
    health = client.get("/v1/health").json()
    assert health["status"] == "ok" and health["models_loaded"] and health["device"] == "cpu"
    assert health["branches"] == ["aligned", "nonaligned", "global"] and health["bundle"] == str(bundle.resolve())
    assert set(health["versions"]) >= {"groupmood", "torch", "fastapi", "uvicorn"}
    assert health["limits"]["max_upload_bytes"] == LIMITS.max_upload_bytes
    info = client.get("/v1/bundle").json()
    assert info["weights"] == {"aligned": 3.0, "nonaligned": 0.5, "global": 0.5}
    assert [b["model"] for b in info["branches"]] == ["aligned.pt", "nonaligned.pt", "global.pt"]  # no folders
    assert info["chosen_on"] == {"data": "none (random tiny models)", "method": "preset run1"}
    assert info["fallback"] == []


# --------------------------------------------------------------------------- refusals

@pytest.mark.parametrize("case, status, words", [
    ("oversized body", 413, "upload too large: above the limit of 1 MB"),
    ("pixel bomb", 413, "image too large: 100000 x 100000 = 10000000000 pixels, above the limit of 4000000"),
    ("text named .jpg", 415, "not an image file"),
    ("truncated JPEG", 422, "truncated or corrupt image data"),
    ("empty upload", 400, "empty file (0 bytes)"),
])
def test_each_bad_file_is_refused_with_its_status_and_reason(client, astronaut, case, status, words):
    data = {"oversized body": os.urandom(1200 * 1024), "pixel bomb": _png_claiming(100_000, 100_000),
            "text named .jpg": b"this is a text file, not a photo\n", "truncated JPEG": _jpeg(astronaut)[:20_000],
            "empty upload": b""}[case]
    answer = client.post("/v1/predict", files=files(("photo.jpg", data)))
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert body["status"] == status and words in body["error"]
    if case != "oversized body":  # a refused file is named, with its reason
        assert body["error"].startswith("photo.jpg: ")
        assert [(f["file"], f["status"]) for f in body["files"]] == [("photo.jpg", status)]


def test_oversized_body_without_a_length_is_cut_off_while_streaming(client):
    def chunks():
        yield b"--b\r\nContent-Disposition: form-data; name=\"files\"; filename=\"big.jpg\"\r\n\r\n"
        for _ in range(40):
            yield b"\xff" * 64 * 1024
    answer = client.post("/v1/predict", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"})
    assert answer.status_code == 413 and "upload too large" in answer.json()["error"]


def test_one_bad_photo_refuses_the_request_and_names_it(client, photos):
    answer = client.post("/v1/predict", files=files(("a.jpg", photos["astronaut.jpg"]), ("notes.jpg", b"hello"),
                                                     ("b.png", photos["coffee.png"])))
    assert answer.status_code == 415
    assert answer.json()["files"] == [{"file": "notes.jpg", "status": 415,
                                       "error": "not an image file (format not recognised from its content)"}]


@pytest.mark.parametrize("kwargs, status, words", [
    ({"data": {"other": "x"}, "files": [("other", ("a.jpg", b"x"))]}, 400, "no photo in the request"),
    ({"json": {"files": "a.jpg"}}, 415, "send the photos as multipart/form-data"),
    ({"data": {"files": "just text"}, "files": [("x", ("a.jpg", b"x"))]}, 400, "is text, not a file"),
    ({"files": files(*[(f"{k}.jpg", b"x") for k in range(5)])}, 400, "at most 4 files per request"),
    ({"content": b"junk", "headers": {"content-type": "multipart/form-data"}}, 400, "malformed multipart body"),
])
def test_malformed_requests_are_refused(client, kwargs, status, words):
    answer = client.post("/v1/predict", **kwargs)
    assert answer.status_code == status, answer.text
    assert words in answer.json()["error"]


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_wrong_method_is_405_with_allow(client, method):
    answer = client.request(method, "/v1/predict")
    assert answer.status_code == 405 and answer.headers["allow"] == "POST"
    assert answer.json() == {"error": f"method {method} is not allowed on /v1/predict; use POST", "status": 405}
    assert client.post("/v1/health").status_code == 405
    missing = client.get("/v2/nothing")
    assert missing.status_code == 404 and "nothing at /v2/nothing" in missing.json()["error"]


def test_nothing_of_an_upload_is_written_to_disk(tiny, photos, tmp_path, monkeypatch):
    bundle, rec = tiny
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    written: list[str] = []
    seen = []

    def watching(image: np.ndarray):
        seen.append(list(tmp_path.iterdir()))
        return rec.predict_one(image)

    def hook(event: str, args: tuple) -> None:  # any file opened for writing while the server works
        if event == "open" and len(args) > 2:
            mode, flags = args[1], args[2]
            if (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                    isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)):
                written.append(str(args[0]))

    app = create_app(lambda: rec, bundle, LIMITS)
    app.dependency_overrides[get_labeller] = lambda: watching
    with TestClient(app, base_url=LOCAL) as c:
        _AUDIT.append(hook)
        try:
            assert c.post("/v1/predict", files=files(("a.jpg", photos["astronaut.jpg"]))).status_code == 200
            assert c.post("/v1/predict", files=files(("a.jpg", photos["astronaut.jpg"]), ("t.jpg", b"x"))
                          ).status_code == 415
        finally:
            _AUDIT.remove(hook)
    assert seen == [[]] and list(tmp_path.iterdir()) == []
    assert written == []  # uploads are decoded from memory: a kill at any moment leaves nothing behind


_AUDIT: list = []
sys.addaudithook(lambda event, args: [h(event, args) for h in list(_AUDIT)] and None)


def test_an_unexpected_failure_is_a_json_500(tiny, photos):
    bundle, rec = tiny

    def broken(image: np.ndarray):
        raise RuntimeError("out of cheese")

    app = create_app(lambda: rec, bundle, LIMITS)
    app.dependency_overrides[get_labeller] = lambda: broken
    with TestClient(app, raise_server_exceptions=False, base_url=LOCAL) as c:
        answer = c.post("/v1/predict", files=files(("a.jpg", photos["astronaut.jpg"])))
        assert answer.status_code == 500
        assert answer.json()["error"].startswith("internal error (RuntimeError: out of cheese)")
        assert c.get("/v1/health").json()["in_flight"] == 0


# --------------------------------------------------------------------------- concurrency

def test_full_queue_answers_503_with_retry_after_while_health_still_answers(tiny, photos):
    bundle, rec = tiny
    entered, release = threading.Event(), threading.Event()

    def slow(image: np.ndarray):
        entered.set()
        assert release.wait(30)
        return rec.predict_one(image)

    app = create_app(lambda: rec, bundle, ServeLimits(workers=1, queue=0, retry_after_s=3))
    app.dependency_overrides[get_labeller] = lambda: slow
    first: dict = {}
    with TestClient(app, base_url=LOCAL) as c:
        t = threading.Thread(target=lambda: first.update(r=c.post("/v1/predict", files=files(
            ("a.jpg", photos["astronaut.jpg"])))))
        t.start()
        try:
            assert entered.wait(30)
            busy = c.post("/v1/predict", files=files(("b.jpg", photos["astronaut.jpg"])))
            assert busy.status_code == 503 and busy.headers["retry-after"] == "3"
            assert busy.json()["error"] == "busy: 1 requests are being labelled or waiting; try again in 3 s"
            health = c.get("/v1/health")  # inference is off the event loop: the server still answers
            assert health.status_code == 200 and health.json()["in_flight"] == 1
        finally:
            release.set()
            t.join(30)
        assert first["r"].status_code == 200 and first["r"].json()["records"][0]["file"] == "a.jpg"
        assert c.get("/v1/health").json()["in_flight"] == 0


def test_concurrent_requests_get_their_own_records(tiny, photos):
    bundle, rec = tiny
    app = create_app(lambda: rec, bundle, ServeLimits(workers=2, queue=4))
    answers: dict[str, dict] = {}
    with TestClient(app, base_url=LOCAL) as c:
        def ask(name: str) -> None:
            answers[name] = c.post("/v1/predict", files=files((name, photos[name]))).json()
        threads = [threading.Thread(target=ask, args=(n,)) for n in [*photos, *photos]]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert answers["astronaut.jpg"]["records"][0]["n_faces"] == 1
    assert answers["coffee.png"]["records"][0]["no_face"]


# --------------------------------------------------------------------------- page and command

def test_page_is_self_contained_and_uses_the_report_style(client):
    from groupmood.report import LABEL_COLOURS, REPORT_CSS

    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    html = page.text.replace('"http://www.w3.org/2000/svg"', "")  # a namespace name, never fetched
    assert REPORT_CSS in html and 'type="file"' in html and "multiple" in html
    assert "#%02x%02x%02x" % LABEL_COLOURS["Positive"] in html
    for remote in ("http://", "https://", "src=\"//", "<link"):
        assert remote not in html, remote


def test_serve_command_defaults_and_refusals(tiny, capsys):
    defaults = {p.name: p.default for p in serve_cmd.params}
    assert defaults["host"] == "127.0.0.1" and defaults["port"] == 8000 and defaults["max_upload_mb"] == 20.0
    assert main(["serve", "--device", "gpu"]) == 2
    assert "--device" in capsys.readouterr().err
    bundle, _ = tiny
    with __import__("socket").socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        start = time.perf_counter()
        assert main(["serve", "--bundle", str(bundle), "--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
    assert time.perf_counter() - start < 60
    with pytest.raises(ValueError, match="workers must be at least 1"):
        ServeLimits(workers=0)


def test_serve_uses_predicts_detector_settings_with_the_bundles_detector_section(tmp_path, one_thread):
    from groupmood.cli.common import detector_settings

    bundle = _bundle(tmp_path / "b", with_global=False, detector={"min_face_frac": 0.3, "factor": 0.6})
    settings = build_recognizer(bundle, "cpu").detector.settings
    assert settings.min_face_frac == 0.3 and settings.factor == 0.6
    assert detector_settings(None, None, None, None, bundle) == {"min_face_frac": 0.3, "factor": 0.6}

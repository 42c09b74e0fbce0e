"""The app in-process (httpx ASGI transport, real lifespan, real weights and MTCNN):
readiness, auth, overload, errors, OpenAPI, settings, start-up failures."""
from __future__ import annotations

import asyncio
import json
import logging
import shutil
import subprocess
import sys
import threading
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from app.config import Settings
from app.keys import Keyring
from app.main import create_app
from bench.server import server_env
from tests.conftest import ROOT, lfw_photo

pytestmark = pytest.mark.timeout(300)


def settings_for(weights: Path, **kw) -> Settings:
    base = {"weights": weights, "device": "cpu", "detect_workers": 2, "max_batch_delay_ms": 2}
    return Settings(**{**base, **kw})


async def wait_ready(client: httpx.AsyncClient, timeout: float = 60) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (await client.get("/health/ready")).status_code != 200:
        assert loop.time() < deadline, "not ready in time"
        await asyncio.sleep(0.02)


@asynccontextmanager
async def serving(settings: Settings, ready: bool = True):
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test",
                                     timeout=60) as client:
            if ready:
                await wait_ready(client)
            yield app, client


def pair_files(a=("Colin_Powell", 1), b=("Colin_Powell", 2)) -> dict:
    return {"image1": ("a.jpg", lfw_photo(*a).read_bytes(), "image/jpeg"),
            "image2": ("b.jpg", lfw_photo(*b).read_bytes(), "image/jpeg")}


def run(coro):
    return asyncio.run(coro)


class Captured(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(self.format(record))


@pytest.fixture
def captured_logs():
    from app.observability import JsonFormatter
    handler = Captured()
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("faceverify")
    yield handler, logger
    logger.removeHandler(handler)


def test_readiness_is_503_until_warmed_up_and_again_when_shutting_down(tiny_weights,
                                                                       monkeypatch):
    from app.faces import FaceStage
    gate = threading.Event()
    entered = threading.Event()
    real_warm_up = FaceStage.warm_up

    def slow_warm_up(self):
        entered.set()
        assert gate.wait(30)
        real_warm_up(self)

    monkeypatch.setattr(FaceStage, "warm_up", slow_warm_up)

    async def main():
        async with serving(settings_for(tiny_weights, retry_after_s=2), ready=False) as (app,
                                                                                        client):
            await asyncio.to_thread(entered.wait, 30)
            live = await client.get("/health/live")
            not_ready = await client.get("/health/ready")
            verify = await client.post("/verify", files=pair_files())
            metrics_open = await client.get("/metrics")
            gate.set()
            await wait_ready(client)
            ready = await client.get("/health/ready")
        return app, live, not_ready, verify, metrics_open, ready

    app, live, not_ready, verify, metrics_open, ready = run(main())
    assert live.status_code == 200 and live.json() == {"status": "alive"}
    assert not_ready.status_code == 503
    assert not_ready.json()["error"]["code"] == "not_ready"
    assert verify.status_code == 503 and verify.json()["error"]["code"] == "not_ready"
    assert verify.headers["retry-after"] == "2"
    assert metrics_open.status_code == 200 and "faceverify_ready 0.0" in metrics_open.text
    assert ready.status_code == 200
    body = ready.json()
    assert body["status"] == "ready" and body["device"] == "cpu" and body["precision"] == "fp32"
    assert body["model"]["name"] == "tiny" and len(body["model"]["sha256"]) == 64
    # After the lifespan ended (shutdown), the app reports not ready.
    assert app.state.service.ready is False
    assert app.state.service.batcher.running is False


def test_a_failed_warm_up_is_reported_without_its_details(tiny_weights, monkeypatch):
    """Liveness fails (so an orchestrator restarts the process), but the exception's text,
    which can name paths and devices, stays in the server log."""
    from app.faces import FaceStage

    def broken_warm_up(self):
        raise RuntimeError("cannot open /srv/secret/detector.bin on cuda:3")

    monkeypatch.setattr(FaceStage, "warm_up", broken_warm_up)

    async def main():
        async with serving(settings_for(tiny_weights), ready=False) as (app, client):
            await app.state.warmup_task
            return await client.get("/health/live"), await client.get("/health/ready")

    live, ready = run(main())
    for r in (live, ready):
        assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready"
        assert "secret" not in r.text and "cuda" not in r.text, r.text
    assert live.json()["error"]["message"] == "warm-up failed; see the server log"


def test_body_bytes_are_held_until_the_answer_and_given_back_whatever_happened(tiny_weights):
    async def main():
        async with serving(settings_for(tiny_weights)) as (app, client):
            held = app.state.service.body_bytes
            ok = await client.post("/verify", files=pair_files())
            bad = await client.post("/verify", files={**pair_files(),
                                                      "image2": ("b.jpg", b"not an image")})
            missing = await client.post("/verify", files={"image1": pair_files()["image1"]})
            return ok, bad, missing, held.held

    ok, bad, missing, held = run(main())
    assert (ok.status_code, bad.status_code, missing.status_code) == (200, 400, 422)
    assert held == 0


def test_api_keys_on_and_off(tiny_weights, captured_logs):
    handler, logger = captured_logs
    logger.addHandler(handler)
    keys = "first-key-0123456789,second-key-abcdefgh"

    async def main():
        async with serving(settings_for(tiny_weights, api_keys=keys)) as (app, client):
            out = {
                "none": await client.post("/verify", files=pair_files()),
                "wrong": await client.post("/verify", files=pair_files(),
                                           headers={"X-API-Key": "first-key-0123456789x"}),
                "wrong_bearer": await client.post(
                    "/embed", files={"image": pair_files()["image1"]},
                    headers={"Authorization": "Bearer nope"}),
                "x_api_key": await client.post("/verify", files=pair_files(),
                                               headers={"X-API-Key": "second-key-abcdefgh"}),
                "bearer": await client.post(
                    "/embed", files={"image": pair_files()["image1"]},
                    headers={"Authorization": "Bearer first-key-0123456789"}),
                "model_no_key": await client.get("/model"),
                "model_key": await client.get("/model",
                                              headers={"X-API-Key": "first-key-0123456789"}),
            }
            for path in ("/health/live", "/health/ready", "/metrics", "/docs", "/openapi.json",
                         "/"):
                out[path] = await client.get(path)
            app.state.keys = Keyring([])  # auth off
            out["off"] = await client.post("/verify", files=pair_files())
            out["off_model"] = await client.get("/model")
            return out

    out = run(main())
    for name in ("none", "wrong", "wrong_bearer", "model_no_key"):
        r = out[name]
        assert r.status_code == 401, name
        assert r.json()["error"]["code"] == "unauthorized"
        assert r.headers["www-authenticate"].startswith("Bearer")
    assert out["none"].json()["error"]["message"] == "missing API key"
    assert out["wrong"].json()["error"]["message"] == "invalid API key"
    assert out["x_api_key"].status_code == 200 and "verified" in out["x_api_key"].json()
    assert out["bearer"].status_code == 200 and out["bearer"].json()["dim"] == 32
    assert out["model_key"].status_code == 200
    card = out["model_key"].json()
    assert card["name"] == "tiny" and card["embedding_dim"] == 32
    assert "Infinity" not in out["model_key"].text and "NaN" not in out["model_key"].text
    for path in ("/health/live", "/health/ready", "/metrics", "/docs", "/openapi.json", "/"):
        assert out[path].status_code == 200, path
    assert out["off"].status_code == 200 and out["off_model"].status_code == 200
    text = "\n".join(handler.lines)
    assert "first-key" not in text and "second-key" not in text and "nope" not in text
    access = [json.loads(x) for x in handler.lines if '"msg": "request"' in x]
    assert any(x["status"] == 401 and x.get("error_code") == "unauthorized" for x in access)


def test_full_queue_and_too_many_requests_answer_503_with_retry_after(tiny_weights):
    gate = threading.Event()
    started = threading.Event()

    async def main():
        # the batcher's queue: faces encoded there, not in the face workers
        settings = settings_for(tiny_weights, max_queue=2, max_batch_size=2, retry_after_s=3,
                                max_concurrent_requests=64, encode_in_detect_workers=False)
        async with serving(settings) as (app, client):
            svc = app.state.service
            real_forward = svc.batcher.forward

            def blocked_forward(x):
                started.set()
                assert gate.wait(60)
                return real_forward(x)

            svc.batcher.forward = blocked_forward
            first = asyncio.ensure_future(client.post("/verify", files=pair_files()))
            await asyncio.to_thread(started.wait, 30)  # the encoder is busy with `first`
            second = asyncio.ensure_future(client.post(
                "/verify", files=pair_files(("Tony_Blair", 1), ("Tony_Blair", 2))))
            while svc.batcher.depth < 2:  # `second`'s pair fills the queue
                await asyncio.sleep(0.01)
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            third = await client.post("/verify", files=pair_files())
            third_s = loop.time() - t0
            svc.settings.max_concurrent_requests = 2  # `first` and `second` are in flight
            fourth = await client.post("/embed", files={"image": pair_files()["image1"]})
            gate.set()
            done = await asyncio.gather(first, second)
            svc.settings.max_concurrent_requests = 64
            again = await client.post("/verify", files=pair_files())
            metrics = (await client.get("/metrics")).text
            return third, third_s, fourth, done, again, metrics

    third, third_s, fourth, done, again, metrics = run(main())
    assert third.status_code == 503 and third.json()["error"]["code"] == "overloaded"
    assert third.headers["retry-after"] == "3"
    assert "queue is full" in third.json()["error"]["message"]
    assert third_s < 10  # answered at once (after its own detection), not after the queue
    assert fourth.status_code == 503 and fourth.json()["error"]["code"] == "overloaded"
    assert fourth.headers["retry-after"] == "3"
    assert "in progress" in fourth.json()["error"]["message"]
    assert [r.status_code for r in done] == [200, 200]
    assert again.status_code == 200
    assert 'faceverify_requests_total{route="/verify",status="503"} 1.0' in metrics
    assert 'faceverify_requests_total{route="/embed",status="503"} 1.0' in metrics


def test_an_internal_error_is_500_without_details_and_logged_with_the_request_id(
        tiny_weights, captured_logs):
    handler, logger = captured_logs
    logger.addHandler(handler)

    async def main():
        async with serving(settings_for(tiny_weights, encode_in_detect_workers=False)
                           ) as (app, client):
            def broken(x):
                raise RuntimeError("secret detail in /some/internal/path.py")
            app.state.service.batcher.forward = broken
            r = await client.post("/verify", files=pair_files(),
                                  headers={"X-Request-ID": "req-500-test"})
            app.state.service.batcher.forward = app.state.service.runner
            ok = await client.post("/verify", files=pair_files())
            return r, ok

    r, ok = run(main())
    assert r.status_code == 500
    body = r.json()
    assert body["error"]["code"] == "internal_error"
    assert "secret" not in r.text and "Traceback" not in r.text and ".py" not in r.text
    assert r.headers["x-request-id"] == "req-500-test"
    assert ok.status_code == 200  # the batcher survived
    lines = [json.loads(x) for x in handler.lines]
    errors = [x for x in lines if x.get("request_id") == "req-500-test"]
    assert any("secret detail" in x.get("exc", "") for x in errors)  # in the log, not the reply
    access = [x for x in errors if x["msg"] == "request"]
    assert len(access) == 1 and access[0]["status"] == 500


def test_request_ids_and_one_log_line_per_request(tiny_weights, captured_logs):
    handler, logger = captured_logs
    logger.addHandler(handler)

    async def main():
        async with serving(settings_for(tiny_weights)) as (_, client):
            given = await client.get("/health/live", headers={"X-Request-ID": "abc-123"})
            fresh = await client.get("/health/live")
            bad = await client.get("/health/live", headers={"X-Request-ID": "x" * 500})
            return given, fresh, bad

    given, fresh, bad = run(main())
    assert given.headers["x-request-id"] == "abc-123"
    assert len(fresh.headers["x-request-id"]) == 32
    assert bad.headers["x-request-id"] != "x" * 500  # not echoed: too long
    access = [json.loads(x) for x in handler.lines if '"msg": "request"' in x]
    ids = [x["request_id"] for x in access if x["route"] == "/health/live"]
    assert ids == ["abc-123", fresh.headers["x-request-id"], bad.headers["x-request-id"]]
    assert all({"method", "route", "status", "duration_ms"} <= set(x) for x in access)


def test_openapi_has_examples_for_every_route_and_error():
    app = create_app(Settings(weights="missing.safetensors"))

    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return (await client.get("/openapi.json")).json(), await client.get("/docs")

    spec, docs = run(main())
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    expected = {("/verify", "post"), ("/embed", "post"), ("/health/live", "get"),
                ("/health/ready", "get"), ("/metrics", "get"), ("/model", "get"),
                ("/galleries/{gallery}/subjects/{subject}/faces", "post"),
                ("/galleries/{gallery}/identify", "post"),
                ("/galleries/{gallery}/subjects/{subject}/verify", "post"),
                ("/galleries/{gallery}/subjects", "get"),
                ("/galleries/{gallery}/subjects/{subject}", "delete"),
                ("/galleries/{gallery}/subjects/{subject}/faces/{face_id}", "delete")}
    found = {(p, m) for p, ops in spec["paths"].items() for m in ops}
    assert expected <= found
    schemas = spec["components"]["schemas"]

    def has_example(content: dict) -> bool:
        for media in content.values():
            if "example" in media or "examples" in media:
                return True
            ref = media.get("schema", {}).get("$ref", "")
            if ref and "example" in schemas[ref.rsplit("/", 1)[1]]:
                return True
        return False

    for path, method in expected:
        op = spec["paths"][path][method]
        for status, resp in op["responses"].items():
            if status == "204":
                continue  # no body
            assert has_example(resp.get("content", {})), (path, method, status)
    verify = spec["paths"]["/verify"]["post"]
    assert {"400", "401", "408", "413", "415", "422", "500", "503"} <= set(verify["responses"])
    body = verify["requestBody"]["content"]
    assert set(body) == {"multipart/form-data", "application/json"}
    assert body["multipart/form-data"]["schema"]["properties"]["image1"]["format"] == "binary"
    codes = {ex["value"]["error"]["code"]
             for resp in verify["responses"].values() if "examples" in
             resp.get("content", {}).get("application/json", {})
             for ex in resp["content"]["application/json"]["examples"].values()}
    assert codes == {"invalid_image", "unauthorized", "forbidden", "request_timeout",
                     "payload_too_large", "unsupported_media_type", "no_face_detected",
                     "validation_error", "internal_error", "overloaded", "not_ready"}
    identify = spec["paths"]["/galleries/{gallery}/identify"]["post"]
    assert {"404", "409", "503"} <= set(identify["responses"])
    assert "store_unavailable" in identify["responses"]["503"]["content"]["application/json"][
        "examples"]


def test_unknown_routes_and_methods_use_the_error_shape():
    app = create_app(Settings(weights="missing.safetensors"))

    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get("/nope"), await client.get("/verify")

    missing, wrong_method = run(main())
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["code"] == "method_not_allowed"


def test_startup_refuses_missing_weights_card_or_threshold(tiny_weights, tmp_path):
    async def start(settings):
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            pass

    with pytest.raises(SystemExit, match="weights file not found"):
        run(start(settings_for(tmp_path / "absent.safetensors")))
    no_card = tmp_path / "nocard.safetensors"
    shutil.copy(tiny_weights, no_card)
    with pytest.raises(SystemExit, match="model card .* is missing"):
        run(start(settings_for(no_card)))
    no_threshold = tmp_path / "nothreshold.safetensors"
    shutil.copy(tiny_weights, no_threshold)
    card = json.loads(tiny_weights.with_suffix(".json").read_text())
    card["threshold"] = {"value": None}
    no_threshold.with_suffix(".json").write_text(json.dumps(card))
    with pytest.raises(SystemExit, match="no calibrated threshold"):
        run(start(settings_for(no_threshold)))


def test_uvicorn_exits_non_zero_with_a_clear_message_on_corrupt_weights(tiny_weights,
                                                                        tmp_path):
    bad = tmp_path / "corrupt.safetensors"
    data = bytearray(tiny_weights.read_bytes())
    data[-100] ^= 0xFF  # one flipped byte: sha256 no longer matches the card
    bad.write_bytes(bytes(data))
    shutil.copy(tiny_weights.with_suffix(".json"), bad.with_suffix(".json"))
    proc = subprocess.run(
        [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port",
         "0"], cwd=ROOT, env=server_env(bad), capture_output=True, text=True, timeout=120,
        check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    first_error = next(json.loads(x) for x in out.splitlines()
                       if x.startswith("{") and '"level": "error"' in x)
    assert first_error["msg"].startswith("start-up failed: cannot load the weights")
    assert "does not match the model card" in first_error["msg"]
    assert "Uvicorn running" not in out  # it never served


def test_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("FACEVERIFY_API_KEYS", " alpha-secret, beta-secret ,,")
    monkeypatch.setenv("FACEVERIFY_MAX_BATCH_SIZE", "8")
    monkeypatch.setenv("FACEVERIFY_DEVICE", "CUDA:1")
    monkeypatch.setenv("FACEVERIFY_THRESHOLD", "0.9")
    monkeypatch.setenv("FACEVERIFY_LOG_LEVEL", "DEBUG")
    s = Settings()
    assert [k.get_secret_value() for k in s.api_keys] == ["alpha-secret", "beta-secret"]
    assert s.auth_enabled
    assert "secret" not in repr(s) and "secret" not in str(s.model_dump())  # never shown
    assert s.max_batch_size == 8 and s.device == "cuda:1" and s.threshold == 0.9
    assert s.log_level == "debug"
    monkeypatch.setenv("FACEVERIFY_DEVICE", "tpu")
    with pytest.raises(ValueError, match="auto, cpu, cuda"):
        Settings()
    monkeypatch.setenv("FACEVERIFY_DEVICE", "auto")
    monkeypatch.setenv("FACEVERIFY_MAX_BATCH_SIZE", "1")  # a pair must fit in a batch
    with pytest.raises(ValueError):
        Settings()


def test_every_setting_is_documented_with_its_default():
    from app.config import settings_table
    doc = (ROOT / "docs" / "api.md").read_text()
    for env, default, _ in settings_table():
        row = next((line for line in doc.splitlines() if line.startswith(f"| `{env}` |")),
                   None)
        assert row is not None, f"{env} is not documented in docs/api.md"
        assert f"`{default}`" in row or (default == "" and "(unset)" in row), (env, default, row)


def test_startup_refuses_weights_whose_preprocessing_this_code_cannot_reproduce(tiny_weights,
                                                                                 tmp_path):
    from tests.service_support import weights_with_spec
    odd = weights_with_spec(tiny_weights, tmp_path / "odd.safetensors", landmarks="retinaface5")

    async def start():
        app = create_app(settings_for(odd))
        async with app.router.lifespan_context(app):
            pass

    with pytest.raises(SystemExit, match="cannot reproduce the preprocessing spec.*retinaface5"):
        run(start())


@pytest.mark.slow
def test_small_faces_in_large_frames_get_the_verdicts_of_the_photos_alone():
    """LFW photos pasted at their own scale into 2000x1500 frames (bench.large_frames does
    600 View 2 pairs): /verify on the default weights says the same as on the photos."""
    import numpy as np
    from PIL import Image

    from bench.large_frames import paste_into_canvas
    from tests.conftest import lfw_or_skip
    from tests.service_support import DEFAULT_WEIGHTS, devtest_pairs
    chosen = devtest_pairs(lfw_or_skip(), 4, 4)
    rng = np.random.default_rng(1)

    async def go():
        async with serving(settings_for(DEFAULT_WEIGHTS)) as (_, client):
            out = []
            for a, b, same in chosen:
                alone = await client.post("/verify", files={
                    "image1": ("a.jpg", a.read_bytes()), "image2": ("b.jpg", b.read_bytes())})
                framed = await client.post("/verify", files={
                    "image1": ("a.jpg", paste_into_canvas(Image.open(a), rng)),
                    "image2": ("b.jpg", paste_into_canvas(Image.open(b), rng))})
                out.append((alone.json(), framed.json(), same))
            return out

    for alone, framed, same in run(go()):
        assert alone["verified"] == framed["verified"], (alone, framed)
        assert abs(alone["distance"] - framed["distance"]) < 0.05, (alone, framed)
        width = framed["faces"][0]["box"][2] - framed["faces"][0]["box"][0]
        assert abs(width - (alone["faces"][0]["box"][2] - alone["faces"][0]["box"][0])) < 10

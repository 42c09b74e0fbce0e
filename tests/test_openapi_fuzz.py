"""The OpenAPI schema says what the server enforces: schemathesis fuzzes a real server.

One real server (uvicorn in a subprocess, bench/server.py) with scoped API keys; its own
/openapi.json is loaded, and every operation gets a bounded, reproducible run (derandomized
Hypothesis, MAX_EXAMPLES each) of the schema's own examples, of schema-valid requests and of
schema-invalid ones, sent with a key. Every answer must pass:
- `not_a_server_error`: no 5xx (the service's 503s are load answers; none comes here);
- `status_code_conformance`, `content_type_conformance`, `response_headers_conformance`: a
  documented status, content type and headers;
- `response_schema_conformance`: a body that matches the documented schema;
- `negative_data_rejection`: a schema-invalid request is refused (a multipart body's text
  fields aside: see `negative_data_rejection` below);
- `ignored_auth`: a route the schema says needs a key refuses a request without one;
- `refused_only_for_what_a_schema_cannot_say`: a schema-valid request (or the schema's example)
  succeeds, or is refused for what no schema can say: its image's content (not an image, too
  many pixels, a format not served, no face), a gallery, subject or face that does not exist,
  a key's scope. Before issue 24 this refused the schema's own base64 example (it was not
  base64) and thresholds under the schema's `maximum` 2 but over the server's cap.
Image fields are drawn from real LFW photos (when LFW is there: the runs reach the 200s and
201s), a 1x1 PNG (no face) and arbitrary bytes. Explicit cases then check the caps the schema
declares at their boundary, and real answers of every kind.
"""
from __future__ import annotations

import base64
import json
from pathlib import Path

import httpx
import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.core.parameters import ParameterLocation
from schemathesis.specs.openapi.formats import (
    register_string_format,
    unregister_string_format,
)

from app.keys import new_key
from tests.conftest import LFW_IMAGES, lfw_photo
from tests.service_support import DEFAULT_WEIGHTS, running_server

pytestmark = pytest.mark.timeout(600)

MAX_EXAMPLES = 30  # per operation and generation mode; the whole file runs in ~30 s
SEED = 24
ONE_PIXEL_PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGNgAAAAAgABSK+kcQAAAABJRU5ErkJggg==")
IMAGE_FIELDS = {"image", "image1", "image2"}
# What a schema-valid request may still be refused for: its image's content, which no schema
# can describe (400 not an image, 413 too many pixels, 415 a format not served, 422 no face)...
IMAGE_REFUSALS = {(400, "invalid_image"), (413, "payload_too_large"),
                  (415, "unsupported_media_type"), (422, "no_face_detected")}
# ...and what depends on state, not on the request's shape: keys, galleries, subjects.
STATE_REFUSALS = {401, 403, 404, 409}


def face_photos() -> list[bytes]:
    if not LFW_IMAGES.is_dir():
        return []
    return [lfw_photo(n, i).read_bytes() for n, i in (("Tony_Blair", 1), ("Tony_Blair", 2),
                                                       ("Laura_Bush", 1))]


# ------------------------------------------------------------------------------ the server
@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A keys file: `ops` may do everything, `door` may only identify in gallery `staff`."""
    made = {"ops": new_key("ops", ["*"], ["*"]),
            "door": new_key("door", ["staff"], ["identify"])}
    path = tmp_path_factory.mktemp("keys") / "keys.json"
    path.write_text(json.dumps([k["entry"] for k in made.values()]))
    return path, {name: k["key"] for name, k in made.items()}


@pytest.fixture(scope="module")
def server(keys, tmp_path_factory):
    with running_server(DEFAULT_WEIGHTS, tmp_path_factory.mktemp("fuzz") / "server.log",
                        detect_workers=1, api_keys_file=keys[0]) as s:
        yield s


@pytest.fixture(scope="module")
def api_schema(server):
    """The running server's own schema; image fields are drawn from real photos first (to
    reach the 200s), then a 1x1 PNG (no face) and arbitrary bytes."""
    config = schemathesis.Config.from_dict({
        "seed": SEED, "request-timeout": 60,
        "generation": {"deterministic": True, "database": "none",
                       "with-security-parameters": False}})
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json", config=config)
    images = st.sampled_from([*face_photos(), ONE_PIXEL_PNG]) | st.binary(max_size=64)
    register_string_format("binary", images)
    register_string_format("byte", images.map(lambda b: base64.b64encode(b).decode()))
    yield schema
    unregister_string_format("binary")
    unregister_string_format("byte")


def refused_only_for_what_a_schema_cannot_say(ctx, response, case) -> None:
    """A schema-valid request is answered, or refused for its image's content or for state;
    never for a field the schema declared it valid (a threshold, top_k, base64...)."""
    if case.meta is None or not case.meta.generation.mode.is_positive:
        return
    status = response.status_code
    if status < 400 or status in STATE_REFUSALS:
        return
    error = json.loads(response.content)["error"]
    if ((status, error["code"]) in IMAGE_REFUSALS and error["field"] in IMAGE_FIELDS
            and "base64" not in error["message"]):
        return
    raise AssertionError(f"a schema-valid request was refused: {status} {error}")


def negative_data_rejection(ctx, response, case) -> bool | None:
    """schemathesis' check, less a multipart body made invalid: its fields are text, which the
    server reads as app/intake.py says (a boolean also from 1/0, yes/no, on/off; an empty
    field is the default, as the schema's descriptions say) and schemathesis only as JSON, and
    it counts an empty array as a field sent (none is)."""
    if case.media_type == "multipart/form-data" and case.meta is not None \
            and case.meta.is_negative_at(ParameterLocation.BODY):
        return None
    return schemathesis.checks.negative_data_rejection(ctx, response, case)


CHECKS = [
    schemathesis.checks.not_a_server_error,
    schemathesis.checks.status_code_conformance,
    schemathesis.checks.content_type_conformance,
    schemathesis.checks.response_headers_conformance,
    schemathesis.checks.response_schema_conformance,
    negative_data_rejection,
    schemathesis.checks.ignored_auth,
    refused_only_for_what_a_schema_cannot_say,
]
# Every operation of the schema (test_the_fuzzed_operations_are_all_of_them keeps it so).
OPERATIONS = [
    ("POST", "/verify"), ("POST", "/embed"), ("GET", "/health/live"), ("GET", "/health/ready"),
    ("GET", "/metrics"), ("GET", "/model"),
    ("POST", "/galleries/{gallery}/subjects/{subject}/faces"),
    ("POST", "/galleries/{gallery}/identify"),
    ("POST", "/galleries/{gallery}/subjects/{subject}/verify"),
    ("GET", "/galleries/{gallery}/subjects"),
    ("DELETE", "/galleries/{gallery}/subjects/{subject}"),
    ("DELETE", "/galleries/{gallery}/subjects/{subject}/faces/{face_id}"),
]
NO_INPUT = {"/health/live", "/health/ready", "/metrics", "/model"}  # nothing to make invalid
WITH_EXAMPLES = {"/verify", "/embed", "/galleries/{gallery}/subjects/{subject}/faces",
                 "/galleries/{gallery}/identify",
                 "/galleries/{gallery}/subjects/{subject}/verify"}  # the JSON body's example
FUZZED = [(m, p, mode) for m, p in OPERATIONS for mode in ("examples", "positive", "negative")
          if mode == "positive" or (mode == "negative" and p not in NO_INPUT)
          or (mode == "examples" and p in WITH_EXAMPLES)]
# What a schema-valid run must reach with real photos: their successes.
SUCCESSES = {"/verify": 200, "/embed": 200, "/galleries/{gallery}/subjects/{subject}/faces": 201}


def test_the_fuzzed_operations_are_all_of_them(api_schema):
    served = {(op.ok().method.upper(), op.ok().path) for op in api_schema.get_all_operations()}
    assert served == set(OPERATIONS)


@pytest.mark.parametrize(("method", "path", "mode"), FUZZED,
                         ids=[f"{m} {p} {mode}" for m, p, mode in FUZZED])
def test_every_answer_is_the_one_the_schema_documents(api_schema, keys, method, path, mode):
    """Schemathesis' cases for one operation (the schema's own examples, schema-valid ones,
    or schema-invalid ones), sent with the `ops` key; each answer through CHECKS. Hypothesis
    is derandomized: the same cases on every run."""
    operation = api_schema[path][method]
    if mode == "examples":
        strategy = st.one_of(operation.get_strategies_from_examples())
    else:
        strategy = operation.as_strategy(generation_mode=schemathesis.GenerationMode(mode))
    headers = {"X-API-Key": keys[1]["ops"]}
    statuses = []

    @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def fuzz(case):
        statuses.append(case.call_and_validate(headers=headers, checks=CHECKS,
                                               timeout=60).status_code)

    fuzz()
    if mode == "positive" and path in SUCCESSES and face_photos():
        assert SUCCESSES[path] in statuses, statuses  # the fuzzer reached the real answers


# -------------------------------------------------------------------- explicit answers
@pytest.fixture(scope="module")
def validated(api_schema, keys):
    """One request built by hand through the schema's operation (with a key of `keys`),
    its answer validated like the fuzzer's."""
    def call(path: str, method: str, key: str = "ops", **case) -> httpx.Response:
        c = api_schema[path][method].Case(**case)
        response = c.call(headers={"X-API-Key": keys[1][key]}, timeout=60)
        c.validate_response(response, checks=CHECKS)
        return response
    return call


def test_the_schema_declares_the_limits_the_server_enforces(server, validated):
    spec = httpx.get(f"{server.url}/openapi.json").json()
    card = validated("/model", "GET").json()  # the served one (the int8 graph's thresholds)
    paths = spec["paths"]

    def threshold(path: str, media: str) -> dict:
        body = paths[path]["post"]["requestBody"]["content"][media]
        return body["schema"]["properties"]["threshold"]

    verify_cap = threshold("/verify", "application/json")["maximum"]
    assert 0 < verify_cap < 2
    assert verify_cap >= card["threshold"]["value"]  # the default is always allowed
    for media in ("application/json", "multipart/form-data"):
        assert threshold("/verify", media)["maximum"] == verify_cap
        assert threshold("/galleries/{gallery}/subjects/{subject}/verify",
                         media)["maximum"] == verify_cap
        identify = threshold("/galleries/{gallery}/identify", media)
        assert 0 < identify["maximum"] < 2 and "gallery" in identify["description"]
    for path in ("/verify", "/embed", "/galleries/{gallery}/identify"):
        body = paths[path]["post"]["requestBody"]["content"]
        for name, prop in body["application/json"]["schema"]["properties"].items():
            if name in IMAGE_FIELDS:
                assert prop["contentEncoding"] == "base64" and prop["format"] == "byte"
                base64.b64decode(body["application/json"]["example"][name], validate=True)
    crops = spec["components"]["schemas"]["VerifyResponse"]["properties"]["crops"]
    assert crops["anyOf"][0]["items"]["contentEncoding"] == "base64"
    # keys are configured: every route with a key check says so
    assert set(spec["components"]["securitySchemes"]) == {"ApiKey", "Bearer"}
    for path, ops in paths.items():
        for method, op in ops.items():
            guarded = path in ("/verify", "/embed", "/model") or path.startswith("/galleries/")
            assert ("security" in op) == guarded, (path, method)
            assert "500" in op["responses"], (path, method)
            if guarded:
                assert {"401", "503"} <= set(op["responses"]), (path, method)

    # at the cap: allowed; just above it: refused, and both answers are documented ones
    pair = [lfw_photo("Tony_Blair", 1).read_bytes(), lfw_photo("Tony_Blair", 2).read_bytes()]
    body = {"image1": base64.b64encode(pair[0]).decode(),
            "image2": base64.b64encode(pair[1]).decode()}
    at_cap = validated("/verify", "POST", media_type="application/json",
                       body={**body, "threshold": verify_cap})
    assert at_cap.status_code == 200 and at_cap.json()["threshold"] == verify_cap
    over = validated("/verify", "POST", media_type="application/json",
                     body={**body, "threshold": verify_cap + 1e-4})
    assert over.status_code == 422 and over.json()["error"]["field"] == "threshold"
    # JSON's types, as declared: a number as a string is refused, null is the default
    text = validated("/verify", "POST", media_type="application/json",
                     body={**body, "threshold": "0.3"})
    assert text.status_code == 422 and text.json()["error"]["field"] == "threshold"
    null = validated("/verify", "POST", media_type="application/json",
                     body={**body, "threshold": None, "detect": None})
    assert null.status_code == 200 and null.json()["threshold"] == card["threshold"]["value"]


def test_real_photos_get_answers_that_match_the_schema(validated):
    a, b = (lfw_photo("Tony_Blair", i).read_bytes() for i in (1, 2))
    r = validated("/verify", "POST", media_type="multipart/form-data",
                  body={"image1": a, "image2": b}, query={"return_crops": "true"})
    assert r.status_code == 200 and r.json()["verified"] is True
    assert all(base64.b64decode(c, validate=True).startswith(b"\x89PNG")
               for c in r.json()["crops"])
    r = validated("/embed", "POST", media_type="application/json",
                  body={"image": base64.b64encode(a).decode()})
    assert r.status_code == 200 and r.json()["normalized"] is True

    g = {"gallery": "staff", "subject": "tony"}
    r = validated("/galleries/{gallery}/subjects/{subject}/faces", "POST",
                  path_parameters=g, media_type="multipart/form-data", body={"image": a},
                  headers={"Idempotency-Key": "first-tony"})
    assert r.status_code == 201
    face_id = r.json()["face_id"]
    r = validated("/galleries/{gallery}/identify", "POST",
                  path_parameters={"gallery": "staff"}, media_type="application/json",
                  body={"image": base64.b64encode(b).decode(), "top_k": 3.0})  # an integer
    assert r.status_code == 200 and r.json()["candidates"][0]["subject"] == "tony"
    r = validated("/galleries/{gallery}/subjects/{subject}/verify", "POST",
                  path_parameters=g, media_type="multipart/form-data", body={"image": b})
    assert r.status_code == 200 and r.json()["verified"] is True
    r = validated("/galleries/{gallery}/subjects", "GET",
                  path_parameters={"gallery": "staff"})
    assert r.status_code == 200 and r.json()["subjects"] == [{"subject": "tony", "faces": 1}]
    # the door's key may identify in staff, not enroll: 403, a documented answer
    r = validated("/galleries/{gallery}/subjects/{subject}/faces", "POST",
                  path_parameters=g, media_type="multipart/form-data", body={"image": a},
                  key="door")
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    r = validated("/galleries/{gallery}/subjects/{subject}/faces/{face_id}",
                  "DELETE", path_parameters={**g, "face_id": face_id})
    assert r.status_code == 204
    r = validated("/galleries/{gallery}/subjects/{subject}", "DELETE",
                  path_parameters=g)
    assert r.status_code == 404  # its last face went with it

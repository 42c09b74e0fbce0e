"""HTTP checks of the docker smoke test (deploy/ci/docker-smoke.sh). Standard library only.

    python3 smoke_check.py ready  URL [--timeout S]
    python3 smoke_check.py verify URL --lfw-dir DIR [--expect-verdicts] [--key K]
    python3 smoke_check.py balance LB_URL --lfw-dir DIR --replicas N [--requests M] [--key K]
    python3 smoke_check.py enroll   URL --lfw-dir DIR --gallery G [--subjects a,b] --key K
    python3 smoke_check.py identify URL --lfw-dir DIR --gallery G [--expect S] [--absent S]...
                                    [--present S]... [--within T] --key K
    python3 smoke_check.py delete   URL --gallery G --subject S --key K
    python3 smoke_check.py subjects URL --gallery G --expect a,b [--within T] --key K
    python3 smoke_check.py anonymous URL --lfw-dir DIR --gallery G
    python3 smoke_check.py scopes   URL --lfw-dir DIR --gallery G --door K --hr K [--verify-key K]

`verify` POSTs /verify with two photos of one person and with two different people and checks
the response's shape and types; with --expect-verdicts (the real default weights are baked in)
also the verdicts: same person -> verified true, different people -> false.
`balance` sends requests through the load balancer and checks that at least N different
replicas answered (nginx's X-Upstream header) and that every answer is a valid /verify reply.
`enroll` enrolls subjects of ENROLL (by default Colin Powell and Serena Williams, one LFW
photo each), each with an Idempotency-Key, and checks the 201 replies; it sends the first
enrollment again with the same key and checks that the answer is the first one replayed
(same face_id, `Idempotent-Replayed: true`). `identify` searches the gallery with another
photo of Colin Powell (PROBE) and checks, retrying for up to --within seconds (the time a
replica that did not take the write needs to see it), that the subject given by --expect is
the top candidate with match true and every other candidate has match false, that no
--absent subject is among the candidates and every --present one is; `delete` deletes a
subject (204); `subjects` lists the gallery's subjects and checks the set (retrying).
`anonymous`: a server with galleries and no keys answers every gallery route 401 with a
message that says how to configure keys. `scopes`: with scoped keys, no key or an unknown key
gets 401 and the door key (identify in G only) gets 403 `forbidden` for enroll, list, delete,
another gallery and /verify, and 200 for identify in G; the HR key lists (200). Keys go in
X-API-Key, or in `Authorization: Bearer` for some of the `scopes` requests.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

SAME = ("Colin_Powell/Colin_Powell_0001.jpg", "Colin_Powell/Colin_Powell_0002.jpg")
DIFFERENT = ("Colin_Powell/Colin_Powell_0001.jpg", "Serena_Williams/Serena_Williams_0001.jpg")
# The galleries' subjects (an enrolled photo each) and the probe: another photo of colin.
ENROLL = {"colin": "Colin_Powell/Colin_Powell_0001.jpg",
          "serena": "Serena_Williams/Serena_Williams_0001.jpg",
          "george": "George_W_Bush/George_W_Bush_0001.jpg"}
DEFAULT_SUBJECTS = "colin,serena"
PROBE = "Colin_Powell/Colin_Powell_0002.jpg"


class CheckFailed(Exception):
    pass


def request(url: str, data: bytes | None = None, headers: dict | None = None,
            timeout: float = 60, method: str | None = None) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(url, data=data, headers=headers or {},
                                 method=method or ("POST" if data is not None else "GET"))
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def multipart(files: dict[str, Path]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    out = bytearray()
    for field, path in files.items():
        out += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; "
                f"filename=\"{path.name}\"\r\nContent-Type: image/jpeg\r\n\r\n").encode()
        out += path.read_bytes() + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"


def wait_ready(url: str, timeout: float) -> dict:
    deadline, last = time.monotonic() + timeout, "no answer"
    while time.monotonic() < deadline:
        try:
            status, _, body = request(url + "/health/ready", timeout=5)
            if status == 200:
                return json.loads(body)
            last = f"HTTP {status}: {body[:200]!r}"
        except OSError as e:
            last = repr(e)
        time.sleep(1)
    raise CheckFailed(f"{url}/health/ready not 200 after {timeout:.0f} s (last: {last})")


def key_headers(key: str | None, bearer: bool = False) -> dict:
    if not key:
        return {}
    return {"Authorization": f"Bearer {key}"} if bearer else {"X-API-Key": key}


def post_verify(url: str, a: Path, b: Path, key: str | None = None) -> tuple[dict, dict]:
    body, ctype = multipart({"image1": a, "image2": b})
    try:
        status, headers, raw = request(url + "/verify", body,
                                       {"Content-Type": ctype, **key_headers(key)},
                                       timeout=120)
    except OSError as e:
        raise CheckFailed(f"POST {url}/verify: {e!r}") from e
    if status != 200:
        raise CheckFailed(f"POST {url}/verify ({a.name}, {b.name}) -> HTTP {status}: "
                          f"{raw[:500]!r}")
    try:
        return json.loads(raw), headers
    except json.JSONDecodeError as e:
        raise CheckFailed(f"POST /verify answered non-JSON: {raw[:200]!r}") from e


def number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def check_shape(r: dict) -> None:
    problems = []
    if not isinstance(r.get("verified"), bool):
        problems.append(f"verified is {r.get('verified')!r}, not a boolean")
    for key, lo, hi in (("distance", 0, 2.0001), ("threshold", 0, 2.0001),
                        ("similarity", -1.0001, 1.0001)):
        if not (number(r.get(key)) and lo <= r[key] <= hi):
            problems.append(f"{key} is {r.get(key)!r}, not a number in [{lo}, {hi:.0f}]")
    if number(r.get("distance")) and number(r.get("threshold")) and isinstance(
            r.get("verified"), bool) and r["verified"] != (r["distance"] < r["threshold"]):
        problems.append("verified != (distance < threshold)")
    model = r.get("model")
    if not (isinstance(model, dict) and all(isinstance(model.get(k), str) and model[k]
                                            for k in ("name", "version", "sha256"))):
        problems.append(f"model is {model!r}, not {{name, version, sha256}}")
    faces = r.get("faces")
    if not (isinstance(faces, list) and len(faces) == 2):
        problems.append(f"faces is {faces!r}, not a list of 2")
    else:
        for i, f in enumerate(faces):
            box, lm = f.get("box"), f.get("landmarks")
            if not (isinstance(box, list) and len(box) == 4 and all(map(number, box))):
                problems.append(f"faces[{i}].box is {box!r}")
            if not (isinstance(lm, list) and len(lm) == 5
                    and all(isinstance(p, list) and len(p) == 2 and all(map(number, p))
                            for p in lm)):
                problems.append(f"faces[{i}].landmarks is {lm!r}")
            if not number(f.get("score")):
                problems.append(f"faces[{i}].score is {f.get('score')!r}")
            if not (isinstance(f.get("faces_found"), int) and f["faces_found"] >= 1):
                problems.append(f"faces[{i}].faces_found is {f.get('faces_found')!r}")
    if not (isinstance(r.get("timings_ms"), dict) and number(r["timings_ms"].get("total"))):
        problems.append(f"timings_ms is {r.get('timings_ms')!r}")
    if problems:
        raise CheckFailed("bad /verify reply: " + "; ".join(problems) +
                          f"\n{json.dumps(r)[:1500]}")


def cmd_ready(args) -> None:
    info = wait_ready(args.url, args.timeout)
    print(f"ready: {args.url} model={info.get('model', {}).get('name')} "
          f"device={info.get('device')} precision={info.get('precision')}")


def cmd_verify(args) -> None:
    lfw = args.lfw_dir / "lfw-deepfunneled"
    for (a, b), same in ((SAME, True), (DIFFERENT, False)):
        r, _ = post_verify(args.url, lfw / a, lfw / b, args.key)
        check_shape(r)
        print(f"verify {Path(a).stem} vs {Path(b).stem}: verified={r['verified']} "
              f"distance={r['distance']:.4f} threshold={r['threshold']:.4f} "
              f"model={r['model']['name']}@{r['model']['sha256'][:12]} "
              f"total={r['timings_ms']['total']} ms")
        if args.expect_verdicts and r["verified"] is not same:
            raise CheckFailed(f"wrong verdict on the default weights: {Path(a).stem} vs "
                              f"{Path(b).stem} verified={r['verified']}, expected {same} "
                              f"(distance {r['distance']:.4f}, threshold {r['threshold']:.4f})")
    print("verify: replies have the documented shape" +
          (" and the right verdicts" if args.expect_verdicts else
           " (verdicts not checked: stand-in weights)"))


def cmd_balance(args) -> None:
    lfw = args.lfw_dir / "lfw-deepfunneled"
    wait_ready(args.url, args.timeout)  # nginx answers once a replica is ready
    seen: dict[str, int] = {}
    for _ in range(args.requests):
        r, headers = post_verify(args.url, lfw / SAME[0], lfw / SAME[1], args.key)
        check_shape(r)
        upstream = {k.lower(): v for k, v in headers.items()}.get("x-upstream", "?")
        seen[upstream] = seen.get(upstream, 0) + 1
    print(f"balance: {args.requests} /verify requests through {args.url} answered by "
          f"{len(seen)} replicas: {seen}")
    if len(seen) < args.replicas or "?" in seen:
        raise CheckFailed(f"expected answers from {args.replicas} replicas, got {seen}")


def post_image(url: str, path: Path, headers: dict | None = None,
               with_headers: bool = False):
    """POST one image (multipart field `image`); the status and the JSON reply (and the
    reply's headers, with_headers)."""
    body, ctype = multipart({"image": path})
    try:
        status, got, raw = request(url, body, {"Content-Type": ctype, **(headers or {})},
                                   timeout=120)
    except OSError as e:
        raise CheckFailed(f"POST {url}: {e!r}") from e
    try:
        reply = json.loads(raw)
    except json.JSONDecodeError as e:
        raise CheckFailed(f"POST {url} -> HTTP {status}, non-JSON: {raw[:200]!r}") from e
    if with_headers:
        return status, reply, {k.lower(): v for k, v in got.items()}
    return status, reply


def check_face(face, where: str) -> None:
    if not (isinstance(face, dict) and isinstance(face.get("box"), list)
            and len(face["box"]) == 4 and number(face.get("score"))):
        raise CheckFailed(f"{where}: face is {face!r}")


def cmd_enroll(args) -> None:
    lfw = args.lfw_dir / "lfw-deepfunneled"
    first = None
    for subject in args.subjects.split(","):
        photo = ENROLL[subject]
        url = f"{args.url}/galleries/{args.gallery}/subjects/{subject}/faces"
        idem = f"smoke-{uuid.uuid4()}"
        headers = {**key_headers(args.key), "Idempotency-Key": idem}
        status, r, got = post_image(url, lfw / photo, headers, with_headers=True)
        if status != 201:
            raise CheckFailed(f"POST {url} ({Path(photo).name}) -> HTTP {status}: {r}")
        if (r.get("gallery"), r.get("subject")) != (args.gallery, subject) or not (
                isinstance(r.get("face_id"), str) and len(r["face_id"]) == 32):
            raise CheckFailed(f"bad enroll reply: {json.dumps(r)[:800]}")
        if got.get("idempotent-replayed"):
            raise CheckFailed(f"a first enrollment answered as a replay: {got}")
        check_face(r.get("face"), "enroll")
        print(f"enroll {args.gallery}/{subject} <- {Path(photo).name} on {args.url}: "
              f"face_id={r['face_id']} total={r.get('timings_ms', {}).get('total')} ms")
        first = first or (url, photo, headers, r["face_id"])
    # A client's retry (same Idempotency-Key): the first answer again, nothing stored.
    url, photo, headers, face_id = first
    status, r, got = post_image(url, lfw / photo, headers, with_headers=True)
    if status != 201 or r.get("face_id") != face_id or got.get("idempotent-replayed") != "true":
        raise CheckFailed(f"retried enroll (same Idempotency-Key) -> HTTP {status}, face_id "
                          f"{r.get('face_id')} (first {face_id}), Idempotent-Replayed "
                          f"{got.get('idempotent-replayed')!r}: {json.dumps(r)[:300]}")
    print(f"enroll retried with the same Idempotency-Key: the first answer replayed "
          f"(face_id {face_id})")


def cmd_identify(args) -> None:
    lfw = args.lfw_dir / "lfw-deepfunneled"
    url = f"{args.url}/galleries/{args.gallery}/identify"
    t0 = time.monotonic()
    deadline, tries, last = t0 + args.within, 0, ""
    while True:
        tries += 1
        status, r = post_image(url, lfw / PROBE, key_headers(args.key))
        problem = identify_problem(status, r, args)
        if problem is None:
            break
        last = problem
        if time.monotonic() >= deadline:
            raise CheckFailed(f"identify {Path(PROBE).name} on {url}: {last} "
                              f"(after {tries} tries in {time.monotonic() - t0:.1f} s)")
        time.sleep(0.25)
    cands = ", ".join(f"{c['subject']} d={c['distance']:.4f} match={c['match']}"
                      for c in r.get("candidates", [])) or "none"
    want = "; ".join([f"top {args.expect}"] * bool(args.expect) +
                     [f"no {a}" for a in args.absent] + [f"with {p}" for p in args.present])
    print(f"identify {Path(PROBE).name} on {url}: {want} after {tries} tries / "
          f"{time.monotonic() - t0:.2f} s; threshold={r.get('threshold', 0):.4f}; "
          f"candidates: {cands}")


def identify_problem(status: int, r: dict, args) -> str | None:
    """None when the reply is what --expect / --absent / --present ask for, else what is
    wrong."""
    if status == 404 and args.absent and not (args.expect or args.present):
        return None  # the gallery's last subject went: no gallery at all
    if status != 200:
        return f"HTTP {status}: {json.dumps(r)[:300]}"
    cands = r.get("candidates")
    if not (isinstance(cands, list) and number(r.get("threshold"))):
        raise CheckFailed(f"bad identify reply: {json.dumps(r)[:800]}")
    check_face(r.get("face"), "identify")
    for c in cands:
        if not (isinstance(c.get("subject"), str) and number(c.get("distance"))
                and isinstance(c.get("match"), bool)
                and c["match"] == (c["distance"] < r["threshold"])):
            raise CheckFailed(f"bad candidate {c!r} (threshold {r['threshold']})")
    subjects = [c["subject"] for c in cands]
    for a in args.absent:
        if a in subjects:
            return f"{a} is still a candidate: {subjects}"
    for p in args.present:
        if p not in subjects:
            return f"{p} is not a candidate: {subjects}"
    if not args.expect:
        return None
    if not cands or cands[0]["subject"] != args.expect:
        return f"top candidate is not {args.expect}: {subjects}"
    if not cands[0]["match"]:
        raise CheckFailed(f"{args.expect} is the top candidate but match is false: {cands[0]} "
                          f"(threshold {r['threshold']:.4f})")
    if any(c["match"] for c in cands[1:]):
        raise CheckFailed(f"another subject matches too: {cands}")
    return None


def cmd_delete(args) -> None:
    url = f"{args.url}/galleries/{args.gallery}/subjects/{args.subject}"
    try:
        status, _, raw = request(url, method="DELETE", headers=key_headers(args.key),
                                 timeout=60)
    except OSError as e:
        raise CheckFailed(f"DELETE {url}: {e!r}") from e
    if status != 204:
        raise CheckFailed(f"DELETE {url} -> HTTP {status}: {raw[:300]!r}")
    print(f"delete {args.gallery}/{args.subject} on {args.url}: 204")


def list_subjects(url: str, key: str | None, bearer: bool = False) -> tuple[int, dict]:
    try:
        status, _, raw = request(url, headers=key_headers(key, bearer), timeout=60)
    except OSError as e:
        raise CheckFailed(f"GET {url}: {e!r}") from e
    try:
        return status, json.loads(raw)
    except json.JSONDecodeError as e:
        raise CheckFailed(f"GET {url} -> HTTP {status}, non-JSON: {raw[:200]!r}") from e


def cmd_subjects(args) -> None:
    url = f"{args.url}/galleries/{args.gallery}/subjects"
    want = {s for s in args.expect.split(",") if s}
    t0 = time.monotonic()
    while True:
        status, r = list_subjects(url, args.key)
        got = {x["subject"]: x["faces"] for x in r.get("subjects", [])} if status == 200 else {}
        if status == 200 and set(got) == want and all(n == 1 for n in got.values()):
            break
        if time.monotonic() - t0 >= args.within:
            raise CheckFailed(f"GET {url} -> HTTP {status}: subjects {got or r}, expected "
                              f"{sorted(want)} with one face each")
        time.sleep(0.25)
    print(f"subjects of {args.gallery} on {args.url}: {got}")


def expect_error(what: str, status: int, r: dict, want_status: int, code: str) -> dict:
    err = r.get("error") if isinstance(r, dict) else None
    if status != want_status or not isinstance(err, dict) or err.get("code") != code:
        raise CheckFailed(f"{what} -> HTTP {status} {json.dumps(r)[:300]}, expected "
                          f"{want_status} {code}")
    print(f"  {what}: {status} {code}")
    return err


def cmd_anonymous(args) -> None:
    """Galleries on, no keys at all: every gallery route refuses, saying how to set keys."""
    lfw = args.lfw_dir / "lfw-deepfunneled"
    g = f"{args.url}/galleries/{args.gallery}"
    print(f"anonymous requests to the galleries of {args.url} (no keys configured):")
    status, r = post_image(f"{g}/subjects/colin/faces", lfw / ENROLL["colin"])
    err = expect_error("enroll without a key", status, r, 401, "unauthorized")
    if "FACEVERIFY_API_KEYS_FILE" not in err.get("message", ""):
        raise CheckFailed(f"the 401 does not say how to configure keys: {err}")
    status, r = post_image(f"{g}/identify", lfw / PROBE)
    expect_error("identify without a key", status, r, 401, "unauthorized")
    status, r = list_subjects(f"{g}/subjects", None)
    expect_error("list without a key", status, r, 401, "unauthorized")


def cmd_scopes(args) -> None:
    """The scope matrix's corners with real keys: 401 without a valid key, 403 forbidden out
    of scope (before any image work), 200 in scope."""
    lfw = args.lfw_dir / "lfw-deepfunneled"
    g = f"{args.url}/galleries/{args.gallery}"
    other = f"{args.url}/galleries/{args.gallery}-other"
    door, hr = args.door, args.hr
    print(f"scoped keys on {args.url} (gallery {args.gallery}):")
    status, r = post_image(f"{g}/identify", lfw / PROBE)
    expect_error("identify without a key", status, r, 401, "unauthorized")
    status, r = post_image(f"{g}/identify", lfw / PROBE, key_headers("not-a-key-" + door[:4]))
    expect_error("identify with an unknown key", status, r, 401, "unauthorized")
    status, r = post_image(f"{g}/subjects/mallory/faces", lfw / PROBE, key_headers(door))
    expect_error("door key: enroll", status, r, 403, "forbidden")
    status, r = list_subjects(f"{g}/subjects", door, bearer=True)
    expect_error("door key (Bearer): list", status, r, 403, "forbidden")
    try:
        status, _, raw = request(f"{g}/subjects/colin", method="DELETE",
                                 headers=key_headers(door), timeout=60)
    except OSError as e:
        raise CheckFailed(f"DELETE: {e!r}") from e
    expect_error("door key: delete", status, json.loads(raw), 403, "forbidden")
    status, r = post_image(f"{other}/identify", lfw / PROBE, key_headers(door))
    expect_error("door key: identify in another gallery", status, r, 403, "forbidden")
    body, ctype = multipart({"image1": lfw / SAME[0], "image2": lfw / SAME[1]})
    status, _, raw = request(f"{args.url}/verify", body,
                             {"Content-Type": ctype, **key_headers(door)}, timeout=120)
    expect_error("door key: /verify", status, json.loads(raw), 403, "forbidden")
    status, r = post_image(f"{g}/identify", lfw / PROBE, key_headers(door, bearer=True))
    if status != 200 or not r.get("candidates"):
        raise CheckFailed(f"door key (Bearer): identify -> HTTP {status}: {json.dumps(r)[:300]}")
    print(f"  door key (Bearer): identify: 200, top {r['candidates'][0]['subject']}")
    status, r = list_subjects(f"{g}/subjects", hr)
    if status != 200:
        raise CheckFailed(f"hr key: list -> HTTP {status}: {json.dumps(r)[:300]}")
    print(f"  hr key: list: 200 ({len(r.get('subjects', []))} subjects)")
    if args.verify_key:
        r, _ = post_verify(args.url, lfw / SAME[0], lfw / SAME[1], args.verify_key)
        check_shape(r)
        print("  verify key: /verify: 200")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    commands = {"ready": cmd_ready, "verify": cmd_verify, "balance": cmd_balance,
                "enroll": cmd_enroll, "identify": cmd_identify, "delete": cmd_delete,
                "subjects": cmd_subjects, "anonymous": cmd_anonymous, "scopes": cmd_scopes}
    for name in commands:
        p = sub.add_parser(name)
        p.add_argument("url")
        p.add_argument("--timeout", type=float, default=180)
        if name not in ("ready", "anonymous", "scopes"):
            p.add_argument("--key", help="the API key to send (X-API-Key)")
        if name not in ("ready", "delete", "subjects"):
            p.add_argument("--lfw-dir", type=Path, required=True)
        if name in ("enroll", "identify", "delete", "subjects", "anonymous", "scopes"):
            p.add_argument("--gallery", default="smoke")
        if name == "enroll":
            p.add_argument("--subjects", default=DEFAULT_SUBJECTS,
                           help=f"comma-separated, among {', '.join(ENROLL)}")
        if name == "delete":
            p.add_argument("--subject", required=True)
        if name == "identify":
            p.add_argument("--expect", help="the subject that must be the top match")
            p.add_argument("--absent", action="append", default=[],
                           help="a subject that must not be a candidate")
            p.add_argument("--present", action="append", default=[],
                           help="a subject that must be a candidate")
        if name == "subjects":
            p.add_argument("--expect", required=True, help="comma-separated: the exact set")
        if name in ("identify", "subjects"):
            p.add_argument("--within", type=float, default=0,
                           help="retry for up to this many seconds (replicas syncing)")
        if name == "scopes":
            p.add_argument("--door", required=True, help="a key for identify in --gallery only")
            p.add_argument("--hr", required=True, help="a key that may list in --gallery")
            p.add_argument("--verify-key", help="a key that may use /verify")
        if name == "verify":
            p.add_argument("--expect-verdicts", action="store_true")
        if name == "balance":
            p.add_argument("--replicas", type=int, default=2)
            p.add_argument("--requests", type=int, default=8)
    args = ap.parse_args(argv)
    if args.cmd == "identify" and not (args.expect or args.absent or args.present):
        ap.error("identify: give --expect, --absent or --present")
    args.url = args.url.rstrip("/")
    try:
        commands[args.cmd](args)
    except CheckFailed as e:
        print(f"smoke_check {args.cmd}: FAILED: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

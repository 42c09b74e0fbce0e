"""The 1:N contract in-process (httpx ASGI transport, real lifespan, the default weights, real
LFW photos, a SQLite gallery in a temporary directory): enroll, identify, subject verify,
list, delete, the errors, the switch, and a change of weights (409 until re-embedded)."""
from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import lfw_photo
from tests.service_support import DEFAULT_WEIGHTS, encode
from tests.test_api import serving, settings_for

pytestmark = pytest.mark.timeout(300)


def photo(name: str, i: int = 1) -> dict:
    return {"image": ("p.jpg", lfw_photo(name, i).read_bytes(), "image/jpeg")}


def gallery_settings(tmp_path: Path, weights: Path = DEFAULT_WEIGHTS, **kw):
    """A server with its gallery in `tmp_path`, anonymous unless keys are given (the tests of
    keys and scopes are in test_gallery_trust.py)."""
    kw.setdefault("gallery_allow_anonymous", True)
    return settings_for(weights, gallery_url=f"sqlite:///{tmp_path}/gallery.db", **kw)


def card(weights: Path) -> dict:
    return json.loads(weights.with_suffix(".json").read_text())


def test_enroll_identify_verify_list_and_delete(tmp_path):
    thresholds = json.loads(DEFAULT_WEIGHTS.with_suffix(".int8.json").read_text())["threshold"]

    async def go():
        async with serving(gallery_settings(tmp_path)) as (_, c):
            base = "/galleries/staff"
            faces = {}
            for name, i in [("Colin_Powell", 1), ("Colin_Powell", 2), ("Tony_Blair", 1),
                            ("George_W_Bush", 1), ("Serena_Williams", 1)]:
                r = await c.post(f"{base}/subjects/{name}/faces", files=photo(name, i))
                assert r.status_code == 201, r.text
                body = r.json()
                assert (body["gallery"], body["subject"]) == ("staff", name)
                assert body["face"]["faces_found"] >= 1 and len(body["face"]["landmarks"]) == 5
                # tagged with what made the vector: the int8 graph beside the weights
                int8 = json.loads(DEFAULT_WEIGHTS.with_suffix(".int8.json").read_text())
                assert body["model"]["sha256"] == int8["graph_sha256"]
                faces.setdefault(name, []).append(body["face_id"])
            # JSON base64 works as for /verify
            r = await c.post(f"{base}/subjects/Laura_Bush/faces", json={
                "image": base64.b64encode(lfw_photo("Laura_Bush", 1).read_bytes()).decode()})
            assert r.status_code == 201

            # who is this? another photo of Tony Blair
            r = await c.post(f"{base}/identify", files=photo("Tony_Blair", 3))
            assert r.status_code == 200, r.text
            out = r.json()
            cands = out["candidates"]
            assert cands[0]["subject"] == "Tony_Blair" and cands[0]["match"] is True
            assert len(cands) == 5 and len({x["subject"] for x in cands}) == 5
            assert [x["distance"] for x in cands] == sorted(x["distance"] for x in cands)
            # the threshold that holds FPIR 1 % among the gallery's 6 faces
            assert (out["threshold_source"], out["gallery_faces"]) == ("fpir", 6)
            assert thresholds["at_far_1e-3"] > out["threshold"] > thresholds["value"] - 0.1
            assert sum(x["match"] for x in cands) == 1
            assert out["timings_ms"]["search"] >= 0 and out["timings_ms"]["total"] > 0
            # best face per subject: Colin Powell's nearest of his two faces
            r = await c.post(f"{base}/identify", files=photo("Colin_Powell", 3),
                             data={"top_k": "2", "threshold": "0.3"})
            out = r.json()
            assert out["candidates"][0]["subject"] == "Colin_Powell"
            assert out["candidates"][0]["face_id"] in faces["Colin_Powell"]
            assert len(out["candidates"]) == 2 and out["threshold"] == 0.3
            r = await c.post(f"{base}/identify?top_k=1", files=photo("Colin_Powell", 3))
            assert len(r.json()["candidates"]) == 1

            # is this Colin Powell? /verify's answer against his nearest face
            r = await c.post(f"{base}/subjects/Colin_Powell/verify", files=photo("Colin_Powell", 4))
            v = r.json()
            assert r.status_code == 200 and v["verified"] is True
            assert v["threshold"] == pytest.approx(thresholds["value"])
            assert v["face_id"] in faces["Colin_Powell"] and v["subject"] == "Colin_Powell"
            r = await c.post(f"{base}/subjects/Colin_Powell/verify", files=photo("Tony_Blair", 2))
            assert r.json()["verified"] is False

            # the list, a page at a time
            seen, cursor = [], None
            while True:
                r = await c.get(f"{base}/subjects", params={"limit": 2, **(
                    {"cursor": cursor} if cursor else {})})
                page = r.json()
                seen += page["subjects"]
                cursor = page["next"]
                if cursor is None:
                    break
            assert seen == [{"subject": s, "faces": n} for s, n in [
                ("Colin_Powell", 2), ("George_W_Bush", 1), ("Laura_Bush", 1),
                ("Serena_Williams", 1), ("Tony_Blair", 1)]]

            # delete one face, then a subject: gone from the list and from every search
            r = await c.delete(f"{base}/subjects/Colin_Powell/faces/{faces['Colin_Powell'][0]}")
            assert r.status_code == 204 and r.content == b""
            r = await c.delete(f"{base}/subjects/Colin_Powell/faces/{faces['Colin_Powell'][0]}")
            assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
            assert (await c.delete(f"{base}/subjects/Tony_Blair")).status_code == 204
            assert (await c.delete(f"{base}/subjects/Tony_Blair")).status_code == 404
            r = await c.post(f"{base}/identify", files=photo("Tony_Blair", 3),
                             data={"top_k": "100"})
            subjects = [x["subject"] for x in r.json()["candidates"]]
            assert "Tony_Blair" not in subjects and len(subjects) == 4
            r = await c.post(f"{base}/identify", files=photo("Colin_Powell", 3))
            assert r.json()["candidates"][0]["face_id"] == faces["Colin_Powell"][1]
            r = await c.post(f"{base}/subjects/Tony_Blair/verify", files=photo("Tony_Blair", 2))
            assert r.status_code == 404
            names = [s["subject"] for s in (await c.get(f"{base}/subjects")).json()["subjects"]]
            assert "Tony_Blair" not in names

            # a photo without a face stores nothing
            blank = encode(Image.new("RGB", (200, 200), (120, 120, 120)), "PNG")
            r = await c.post(f"{base}/subjects/nobody/faces",
                             files={"image": ("b.png", blank, "image/png")})
            assert r.status_code == 422 and r.json()["error"]["code"] == "no_face_detected"
    asyncio.run(go())


def test_errors_names_top_k_thresholds_and_unknown_galleries(tmp_path):
    async def go():
        async with serving(gallery_settings(tmp_path)) as (_, c):
            r = await c.post("/galleries/g/subjects/alice/faces", files=photo("Laura_Bush"))
            assert r.status_code == 201
            for bad in ["a b", "x" * 65, "caf\u00e9", "a/b"]:
                r = await c.post(f"/galleries/g/subjects/{bad}/faces",
                                 files=photo("Laura_Bush"))
                assert r.status_code in (404, 422), bad  # a/b is another route: 404
                if r.status_code == 422:
                    assert r.json()["error"]["field"] == "subject"
            r = await c.post("/galleries/x%20y/identify", files=photo("Laura_Bush"))
            assert r.status_code == 422 and r.json()["error"]["field"] == "gallery"
            ok = "A-Za_z.0-9" + "x" * 54  # 64 characters of the allowed set
            r = await c.post(f"/galleries/g/subjects/{ok}/faces", files=photo("Laura_Bush"))
            assert r.status_code == 201
            for top_k in ["0", "101", "two", "1.5"]:
                r = await c.post("/galleries/g/identify", files=photo("Laura_Bush", 2),
                                 data={"top_k": top_k})
                assert r.status_code == 422 and r.json()["error"]["field"] == "top_k", top_k
            r = await c.post("/galleries/g/identify", files=photo("Laura_Bush", 2),
                             data={"threshold": "0.9"})
            assert r.status_code == 422 and "at most" in r.json()["error"]["message"]
            for path in ["/galleries/none/identify", "/galleries/none/subjects/alice/verify",
                         "/galleries/g/subjects/bob/verify"]:
                r = await c.post(path, files=photo("Laura_Bush", 2))
                assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", path
            assert (await c.get("/galleries/none/subjects")).status_code == 404
            assert (await c.delete("/galleries/g/subjects/bob")).status_code == 404
            r = await c.get("/galleries/g/subjects", params={"limit": 0})
            assert r.status_code == 422
            r = await c.post("/galleries/g/identify")
            assert r.status_code == 415
            spec = (await c.get("/openapi.json")).json()
            for path in ["/galleries/{gallery}/subjects/{subject}/faces",
                         "/galleries/{gallery}/identify",
                         "/galleries/{gallery}/subjects/{subject}/verify",
                         "/galleries/{gallery}/subjects",
                         "/galleries/{gallery}/subjects/{subject}",
                         "/galleries/{gallery}/subjects/{subject}/faces/{face_id}"]:
                assert path in spec["paths"], path
            metrics = (await c.get("/metrics")).text
            assert "faceverify_gallery_vectors 2.0" in metrics
            assert 'faceverify_gallery_writes_total{op="enroll"} 2.0' in metrics
    asyncio.run(go())


def test_api_keys_guard_the_gallery_and_the_switch_turns_it_off(tmp_path):
    async def go():
        async with serving(gallery_settings(tmp_path, api_keys="k1")) as (_, c):
            r = await c.post("/galleries/g/subjects/a/faces", files=photo("Laura_Bush"))
            assert r.status_code == 401
            r = await c.get("/galleries/g/subjects", headers={"X-API-Key": "k1"})
            assert r.status_code == 404  # past the key: no such gallery
        async with serving(gallery_settings(tmp_path / "off", gallery_enabled=False)) as (_, c):
            r = await c.post("/galleries/g/subjects/a/faces", files=photo("Laura_Bush"))
            assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
            assert "/galleries/{gallery}/identify" not in (await c.get("/openapi.json")).json()[
                "paths"]
        assert not (tmp_path / "off").exists()  # no store opened
    asyncio.run(go())


def copy_of_weights(src: Path, dst: Path) -> Path:
    """The same encoder in a file with another sha256 (one more metadata key), as a new
    release of the weights would be."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from model.encoder.weights import sha256_of
    with safe_open(str(src), "pt") as f:
        meta = dict(f.metadata()) | {"copy_of": src.name}
    save_file(load_file(str(src)), str(dst), metadata=meta)
    c = card(src) | {"weights_sha256": sha256_of(dst)}
    dst.with_suffix(".json").write_text(json.dumps(c))
    return dst


def test_new_weights_refuse_identify_until_reembedded(tmp_path):
    from app.gallery.__main__ import main as gallery_cli
    new = copy_of_weights(DEFAULT_WEIGHTS, tmp_path / "new.safetensors")
    url = f"sqlite:///{tmp_path}/gallery.db"

    async def enroll(gallery, names, store_crops):
        # float32, as the new weights (which have no int8 graph beside them) will run
        async with serving(settings_for(DEFAULT_WEIGHTS, gallery_url=url, int8="off",
                                        gallery_store_crops=store_crops,
                                        gallery_allow_anonymous=True)) as (_, c):
            for name in names:
                r = await c.post(f"/galleries/{gallery}/subjects/{name}/faces",
                                 files=photo(name))
                assert r.status_code == 201
            r = await c.post(f"/galleries/{gallery}/identify", files=photo("Tony_Blair", 2))
            return r.json()["candidates"]

    async def search(weights, gallery):
        async with serving(settings_for(weights, gallery_url=url,
                                        gallery_allow_anonymous=True)) as (_, c):
            return await c.post(f"/galleries/{gallery}/identify", files=photo("Tony_Blair", 2))

    async def go():
        before = await enroll("kept", ["Tony_Blair", "Laura_Bush"], store_crops=True)
        await enroll("lost", ["Hans_Blix"], store_crops=False)
        r = await search(new, "kept")
        assert r.status_code == 409 and r.json()["error"]["code"] == "model_mismatch"
        assert "reembed" in r.json()["error"]["message"]
        return before

    before = asyncio.run(go())
    argv = ["reembed", "--url", url, "--weights", str(new)]
    assert gallery_cli(argv) == 1  # one face has no crop to re-embed from
    assert asyncio.run(search(new, "lost")).status_code == 409
    assert gallery_cli([*argv, "--delete-unembeddable"]) == 0
    after = asyncio.run(search(new, "kept"))
    assert after.status_code == 200
    # the same encoder: the re-embedded vectors give the same answer
    got = after.json()["candidates"]
    assert [x["subject"] for x in got] == [x["subject"] for x in before]
    assert [x["distance"] for x in got] == pytest.approx([x["distance"] for x in before],
                                                          abs=1e-4)
    assert asyncio.run(search(new, "lost")).status_code == 404  # its only face was dropped

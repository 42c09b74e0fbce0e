"""faceverify as a library: the Verifier gives /verify's numbers in-process for every kind of
input, the `faceverify` command answers in its documented shapes and exit codes, and the
core install carries no torch."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import ROOT, lfw_photo


@pytest.fixture(scope="module")
def verifier():
    from faceverify import Verifier
    return Verifier()


def faceverify_command(*args: str, cwd: Path | None = None, python: str = sys.executable
                       ) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([python, "-m", "faceverify", *args], check=False,
                          capture_output=True, text=True, timeout=300, env=env, cwd=cwd or ROOT)


# ------------------------------------------------------------------------------ Verifier
def test_verify_gives_the_services_verdict_and_distance(verifier):
    same = verifier.verify(lfw_photo("Colin_Powell", 1), lfw_photo("Colin_Powell", 2))
    other = verifier.verify(lfw_photo("Colin_Powell", 1), lfw_photo("Tony_Blair", 1))
    assert same.verified and not other.verified
    assert same.threshold == other.threshold == verifier.threshold
    assert verifier.model["version"].endswith("+int8")  # the int8 graph, as the service runs
    assert 0 < same.distance < same.threshold < other.distance
    assert same.similarity == pytest.approx(1 - same.distance ** 2 / 2, abs=1e-6)
    assert verifier.verify(lfw_photo("Colin_Powell", 1), lfw_photo("Colin_Powell", 2),
                           threshold=0.1).verified is False

    from tests.test_api import pair_files, run, serving, settings_for

    async def served():
        async with serving(settings_for(ROOT / "weights" / "faceverify-encoder.safetensors",
                                        gallery_enabled=False)) as (_, client):
            return (await client.post("/verify", files=pair_files())).json()
    body = run(served())
    assert body["distance"] == pytest.approx(same.distance, abs=1e-6)
    assert body["threshold"] == same.threshold and body["model"] == same.model
    assert [f["box"] for f in body["faces"]] == [f.box for f in same.faces]


def test_every_input_kind_gives_the_same_embedding(verifier):
    path = lfw_photo("Serena_Williams", 1)
    data = path.read_bytes()
    image = Image.open(path)
    pixels = np.asarray(image.convert("RGB"))
    vectors = [verifier.embed(x) for x in (path, str(path), data, image, pixels)]
    assert vectors[0].shape == (128,) and vectors[0].dtype == np.float32
    assert np.linalg.norm(vectors[0]) == pytest.approx(1, abs=1e-4)
    for v in vectors[1:]:
        assert np.abs(v - vectors[0]).max() < 1e-6


def test_errors_carry_the_services_codes(verifier):
    from faceverify import FaceverifyError
    photo = lfw_photo("Colin_Powell", 1)
    cases = {
        "no_face_detected": np.full((120, 120, 3), 128, np.uint8),
        "invalid_image": b"not an image",
    }
    for code, bad in cases.items():
        with pytest.raises(FaceverifyError) as err:
            verifier.verify(photo, bad)
        assert (err.value.code, err.value.field) == (code, "image2")
        assert err.value.status == {"no_face_detected": 422, "invalid_image": 400}[code]
    with pytest.raises(TypeError):
        verifier.embed(12345)


def test_faces_finds_every_face_largest_first(verifier):
    a = Image.open(lfw_photo("Colin_Powell", 1)).convert("RGB")
    b = Image.open(lfw_photo("Hugo_Chavez", 1)).convert("RGB").resize((180, 180))
    assert len(verifier.faces(a)) == len(verifier.faces(lfw_photo("Hugo_Chavez", 1))) == 1
    group = Image.new("RGB", (500, 260), (255, 255, 255))
    group.paste(a, (0, 5))
    group.paste(b, (300, 40))
    faces = verifier.faces(group)
    assert len(faces) == 2
    areas = [(f.box[2] - f.box[0]) * (f.box[3] - f.box[1]) for f in faces]
    assert areas[0] > areas[1]
    assert faces[0].box[0] < 250 < faces[1].box[0]  # Powell left, Chavez right
    _, vectors = verifier.embed_faces(group)
    assert vectors.shape == (2, 128)
    assert verifier.distance(vectors[0], verifier.embed(a)) < 0.2
    assert verifier.distance(vectors[1], verifier.embed(lfw_photo("Hugo_Chavez", 1))) < 0.3
    assert verifier.faces(np.full((100, 100, 3), 200, np.uint8)) == []


def test_one_verifier_is_shared_by_threads(verifier):
    pairs = [(lfw_photo("Colin_Powell", 1), lfw_photo("Colin_Powell", 2)),
             (lfw_photo("Colin_Powell", 1), lfw_photo("Tony_Blair", 1))] * 4
    alone = [verifier.verify(a, b).distance for a, b in pairs[:2]]
    results: dict[int, float] = {}

    def work(i: int) -> None:
        results[i] = verifier.verify(*pairs[i]).distance
    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(pairs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [results[i] for i in range(len(pairs))] == pytest.approx(alone * 4, abs=1e-6)


# ------------------------------------------------------------------------------ the command
def test_verify_command_prints_json_and_exits_0_1_2():
    same = faceverify_command("verify", str(lfw_photo("Colin_Powell", 1)),
                              str(lfw_photo("Colin_Powell", 2)))
    assert same.returncode == 0, same.stderr
    body = json.loads(same.stdout)
    assert body["verified"] is True and set(body) >= {"distance", "threshold", "faces", "model"}
    other = faceverify_command("verify", str(lfw_photo("Colin_Powell", 1)),
                               str(lfw_photo("Tony_Blair", 1)))
    assert other.returncode == 1 and json.loads(other.stdout)["verified"] is False
    bad = faceverify_command("verify", str(lfw_photo("Colin_Powell", 1)), str(ROOT / "README.md"))
    assert bad.returncode == 2 and bad.stdout == ""
    assert "invalid_image" in bad.stderr and "image2" in bad.stderr


def test_embed_command_prints_one_line_per_image(tmp_path):
    blank = tmp_path / "blank.png"
    Image.new("RGB", (90, 90), (128, 128, 128)).save(blank)
    out = faceverify_command("embed", str(lfw_photo("Hugo_Chavez", 1)), str(blank))
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert out.returncode == 2  # one image had no face
    assert len(lines[0]["embedding"]) == 128
    assert lines[1]["error"]["code"] == "no_face_detected"


def test_identify_labels_a_folder_like_face_recognition(tmp_path):
    """face_recognition's command line: NAME.jpg per known person; one `file,name` line per
    face found; unknown_person for a stranger; no_persons_found for a photo without a face."""
    known, unknown = tmp_path / "known", tmp_path / "unknown"
    known.mkdir()
    (unknown / "more").mkdir(parents=True)
    people = ["Colin_Powell", "Tony_Blair", "Serena_Williams", "Hugo_Chavez"]
    for name in people:
        (known / f"{name}.jpg").write_bytes(lfw_photo(name, 1).read_bytes())
        (unknown / f"{name}_later.jpg").write_bytes(lfw_photo(name, 3).read_bytes())
    (unknown / "more" / "stranger.jpg").write_bytes(lfw_photo("Laura_Bush", 1).read_bytes())
    Image.new("RGB", (200, 200), (90, 90, 90)).save(unknown / "empty_room.jpg")
    for cpus in ("1", "2"):
        out = faceverify_command("identify", str(known), str(unknown), "--cpus", cpus,
                                 "--show-distance", cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        rows = [line.split(",") for line in out.stdout.splitlines()]
        labels = {Path(r[0]).name: r[1] for r in rows}
        assert labels == {**{f"{p}_later.jpg": p for p in people},
                          "stranger.jpg": "unknown_person", "empty_room.jpg": "no_persons_found"}
        assert all(float(r[2]) < 0.4 for r in rows if r[1] in people)
    # a tolerance loose enough names the stranger someone: the threshold is the one used
    loose = faceverify_command("identify", str(known), str(unknown / "more"), "--tolerance",
                               "1.5", cwd=tmp_path)
    assert loose.stdout.strip().split(",")[1] in people


def test_identify_threshold_follows_the_gallery_size_rule():
    """The default is identify's FPIR rule: the distance at FAR = 1 % / known faces on the
    model card's impostor table, stricter as the known set grows (docs/accuracy.md)."""
    from faceverify.cli import identify_threshold
    few, many = identify_threshold(None, 0.01, 4), identify_threshold(None, 0.01, 1000)
    assert 0.3 < many < few < 0.45


# ------------------------------------------------------------------------------ the install
@pytest.mark.slow
def test_the_core_install_runs_without_torch(tmp_path):
    """`pip install .` in a fresh venv: the command verifies two LFW photos, and torch is not
    there to import (pyproject.toml's core dependencies; the versions requirements.lock pins).
    """
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    install = subprocess.run([python, "-m", "pip", "install", "--quiet", "-c",
                              str(ROOT / "requirements.lock"), str(ROOT)],
                             check=False, capture_output=True, text=True, timeout=900)
    assert install.returncode == 0, install.stderr[-3000:]
    no_torch = subprocess.run([python, "-c", "import torch"], check=False,
                              capture_output=True, text=True)
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr
    verify = subprocess.run([str(venv / "bin" / "faceverify"), "verify",
                             str(lfw_photo("Colin_Powell", 1)), str(lfw_photo("Colin_Powell", 2))],
                            check=False, capture_output=True, text=True, timeout=300,
                            cwd=tmp_path)
    assert verify.returncode == 0, verify.stderr
    assert json.loads(verify.stdout)["verified"] is True
    # the installed package carries the shipped weights, not the checkout's
    where = subprocess.run([python, "-c", "from model.shipped import WEIGHTS_DIR as W; print(W)"],
                           check=False, capture_output=True, text=True, cwd=tmp_path)
    assert str(venv) in where.stdout

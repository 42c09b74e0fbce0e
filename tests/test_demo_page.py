"""The demo page at `/`, end to end in headless Chromium against a real uvicorn server.

Why Selenium + Debian's chromedriver: Debian ships `chromium` and `chromium-driver` as one
matched pair (same version, same package source), installed by deploy/ci/install-browser.sh;
WebDriver is a stable W3C protocol, and the Python bindings are a plain pip package in the
`test` extra. Nothing is downloaded at run time (Selenium Manager is never used: the browser
and driver paths are given). Playwright would need its own pinned browser build or a Node
toolchain on top.

Photos: Colin_Powell_0002 and _0005 (one person), Colin_Powell_0002 and Tony_Blair_0001 (two
people), a composite of three LFW faces, and files the service refuses. The Identify tab enrolls
Colin_Powell_0002 and Tony_Blair_0001 in a gallery and searches it with Colin_Powell_0005; the
server's gallery store is a SQLite file in the test's temporary folder.

The server runs with an API key and a small upload limit so that one server covers the key
field, the "too large" message and the rest. Weights: the default weights
(weights/faceverify-encoder.safetensors) when they are there, and then the verdicts must be right
(same person / different people); otherwise the tiny real encoder from the `tiny_weights`
fixture, and the test checks only that a verdict is shown. `FACEVERIFY_DEMO_WEIGHTS=<path>`
overrides the choice (verdicts then not checked).

The screenshot of a verified pair goes to the test's temporary folder, or to
`FACEVERIFY_DEMO_SCREENSHOT` when set (`make demo-screenshot` writes docs/demo.png), so a test
run never changes a tracked file.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import ROOT, lfw_or_skip, lfw_photo
from tests.service_support import DEFAULT_WEIGHTS, crop_size, encode, running_server

pytestmark = pytest.mark.timeout(600)

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
API_KEY = "demo-key-123"
MAX_UPLOAD = 256 * 1024
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--disable-dev-shm-usage", "--lang=en-US",
                  "--force-device-scale-factor=1", "--hide-scrollbars"]
DESKTOP = (1100, 900)
NARROW = (375, 812)


def browser_or_skip():
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not found: install Debian's chromium and "
                    "chromium-driver (sudo deploy/ci/install-browser.sh; CI runs it)")
    try:
        import selenium  # noqa: F401
    except ImportError:
        pytest.skip("selenium is not installed: pip install -e '.[test]'")


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def weights(request) -> tuple[Path, bool]:
    """(weights, whether the verdicts must be right)."""
    browser_or_skip()
    lfw_or_skip()
    override = os.environ.get("FACEVERIFY_DEMO_WEIGHTS")
    if override:
        return Path(override), False
    if DEFAULT_WEIGHTS.exists() and DEFAULT_WEIGHTS.with_suffix(".json").exists():
        return DEFAULT_WEIGHTS, True
    return request.getfixturevalue("tiny_weights"), False


@pytest.fixture(scope="module")
def server(weights, tmp_path_factory):
    folder = tmp_path_factory.mktemp("demo_server")
    # The Identify tab's galleries go to a throwaway SQLite file (sqlite:////tmp/…/gallery.db),
    # never to the repository's data/.
    with running_server(weights[0], folder / "server.log", api_keys=API_KEY,
                        max_upload_bytes=MAX_UPLOAD, max_batch_delay_ms=2, detect_workers=1,
                        gallery_url=f"sqlite:///{folder / 'gallery.db'}") as s:
        yield s


@pytest.fixture(scope="module")
def driver(server, tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager go online
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS + [f"--window-size={DESKTOP[0]},{DESKTOP[1]}"]:
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    log = tmp_path_factory.mktemp("chromedriver") / "chromedriver.log"
    drv = webdriver.Chrome(service=Service(str(CHROMEDRIVER), log_output=str(log)),
                           options=opts)
    drv.set_page_load_timeout(60)
    drv.set_script_timeout(60)
    try:
        drv.execute_cdp_cmd("Browser.grantPermissions", {
            "origin": server.url,
            "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]})
        yield drv
    finally:
        drv.quit()


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, Path]:
    """Real LFW photos, plus files that the service refuses or that hold several faces."""
    d = tmp_path_factory.mktemp("uploads")
    out = {"powell_a": lfw_photo("Colin_Powell", 2), "powell_b": lfw_photo("Colin_Powell", 5),
           "blair": lfw_photo("Tony_Blair", 1)}
    (d / "notes.txt").write_text("this is not a photo\n")
    out["text"] = d / "notes.txt"
    rng = np.random.default_rng(0)  # noise does not compress: well over MAX_UPLOAD
    (d / "big.png").write_bytes(encode(Image.fromarray(
        rng.integers(0, 256, (400, 400, 3), dtype=np.uint8)), "PNG"))
    out["big"] = d / "big.png"
    (d / "photo.ppm").write_bytes(encode(Image.open(out["blair"]).convert("RGB"), "PPM"))
    out["ppm"] = d / "photo.ppm"
    group = Image.new("RGB", (580, 260), (205, 205, 200))
    group.paste(Image.open(out["powell_a"]).convert("RGB"), (0, 5))
    for x, name in ((270, "Tony_Blair"), (425, "Gerhard_Schroeder")):
        group.paste(Image.open(lfw_photo(name, 1)).convert("RGB").resize((150, 150)), (x, 55))
    (d / "group.jpg").write_bytes(encode(group, "JPEG", quality=95))
    out["group"] = d / "group.jpg"
    return out


# ------------------------------------------------------------------------------- helpers
def wait_for(drv, js: str, timeout: float = 90, what: str = ""):
    """Poll a JavaScript expression until it is truthy; return its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = drv.execute_script("return " + js)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or js}; page text:\n"
                                 + drv.execute_script("return document.body.innerText"))
        time.sleep(0.05)


def text(drv, css: str) -> str:
    return drv.execute_script("const e = document.querySelector(arguments[0]);"
                              "return e ? e.innerText : null", css)


def visible(drv, css: str) -> bool:
    return drv.execute_script("const e = document.querySelector(arguments[0]);"
                              "return !!e && !e.closest('[hidden]') && e.offsetParent !== null",
                              css)


def choose(drv, field: str, path: Path) -> None:
    drv.find_element("id", field).send_keys(str(path))


def submit(drv, button_id: str, result_id: str, error_id: str) -> str:
    """Click the button; wait for the result or the error; return which one showed."""
    drv.execute_script(f"document.getElementById('{result_id}').hidden = true;"
                       f"document.getElementById('{error_id}').hidden = true;")
    drv.find_element("id", button_id).click()
    return wait_for(drv, f"(!document.getElementById('{result_id}').hidden && 'result') || "
                         f"(!document.getElementById('{error_id}').hidden && 'error')",
                    what=f"{button_id} → result or error")


def open_page(drv, server, key: str | None = API_KEY, size=DESKTOP) -> None:
    drv.set_window_size(*size)
    drv.get(server.url + "/")
    wait_for(drv, "document.readyState === 'complete'")
    if key is not None:
        drv.execute_script("const k = document.getElementById('api-key'); k.value = arguments[0];"
                           "k.dispatchEvent(new Event('input'))", key)


def verify_pair(drv, a: Path, b: Path) -> str:
    choose(drv, "image1", a)
    choose(drv, "image2", b)
    wait_for(drv, "[...document.querySelectorAll('#panel-verify .preview-img')]"
                  ".every(i => i.complete && i.naturalWidth > 0)", what="both previews")
    return submit(drv, "verify-button", "verify-result", "verify-error")


def api_verify(server, a: Path, b: Path) -> dict:
    r = httpx.post(server.url + "/verify", headers={"X-API-Key": API_KEY}, timeout=60,
                   files={"image1": (a.name, a.read_bytes()), "image2": (b.name, b.read_bytes())})
    assert r.status_code == 200, r.text
    return r.json()


def api_identify(server, gallery: str, photo: Path) -> dict:
    r = httpx.post(f"{server.url}/galleries/{gallery}/identify", headers={"X-API-Key": API_KEY},
                   timeout=60, data={"top_k": "5"}, files={"image": (photo.name,
                                                                     photo.read_bytes())})
    assert r.status_code == 200, r.text
    return r.json()


def listed_subjects(drv) -> list[list[str]]:
    """The Identify tab's subject list: [name, faces text] per row."""
    return drv.execute_script("""return [...document.querySelectorAll('#subject-list li')]
        .map(li => [li.querySelector('.subject-name').textContent,
                    li.querySelector('.subject-faces').textContent])""")


def enroll(drv, subject: str, photo: Path) -> str:
    field = drv.find_element("id", "subject")
    field.clear()
    field.send_keys(subject)
    choose(drv, "enroll-image", photo)
    return submit(drv, "enroll-button", "enroll-result", "enroll-error")


def no_horizontal_scroll(drv) -> bool:
    return drv.execute_script("return document.documentElement.scrollWidth <= "
                              "document.documentElement.clientWidth + 1")


def save_screenshot(drv, path: Path) -> None:
    """The whole page at desktop width (the window grows to the page's height)."""
    height = drv.execute_script("return document.documentElement.scrollHeight")
    drv.set_window_size(DESKTOP[0], height + 100)
    time.sleep(0.2)
    drv.execute_script("window.scrollTo(0, 0); document.activeElement.blur()")
    path.parent.mkdir(parents=True, exist_ok=True)
    assert drv.get_screenshot_as_file(str(path))


def severe_console_errors(drv) -> list[str]:
    return [e["message"] for e in drv.get_log("browser") if e["level"] == "SEVERE"
            and "/favicon.ico" not in e["message"]]


# --------------------------------------------------------------------------------- tests
def test_verify_two_photos_shows_verdicts_gauge_crops_and_boxes(driver, server, weights,
                                                               photos, tmp_path):
    drv, must_be_right = driver, weights[1]
    open_page(drv, server)

    # One person: Colin Powell twice.
    assert verify_pair(drv, photos["powell_a"], photos["powell_b"]) == "result"
    same = api_verify(server, photos["powell_a"], photos["powell_b"])
    verdict = text(drv, "#verdict")
    assert ("Same person" in verdict) == same["verified"], (verdict, same)
    assert "Same person" in verdict or "Different people" in verdict
    if must_be_right:
        assert "Same person" in verdict, verdict
    # The numbers shown are the service's, and the gauge puts them where they belong.
    assert text(drv, "#distance") == f"{same['distance']:.3f}"
    assert text(drv, "#threshold-used") == f"{same['threshold']:.3f}"
    assert text(drv, "#similarity") == f"{same['similarity']:.3f}"
    needle = drv.execute_script("return parseFloat(document.getElementById('gauge-needle')"
                                ".style.left)")
    assert needle == pytest.approx(100 * min(same["distance"], 2) / 2, abs=0.01)
    assert "threshold" in drv.find_element("id", "gauge").get_attribute("aria-label")
    # Both aligned crops render at the encoder's crop size, and the detected boxes are drawn
    # on the previews.
    size = crop_size(weights[0])
    for crop in ("crop1", "crop2"):
        wait_for(drv, f"document.getElementById('{crop}').complete && "
                      f"document.getElementById('{crop}').naturalWidth === {size}",
                 what=f"{crop} rendered")
        assert drv.execute_script(f"return document.getElementById('{crop}').naturalHeight") \
            == size
        assert visible(drv, f"#{crop}")
    boxes = drv.execute_script("""return [...document.querySelectorAll('#panel-verify .face-box')]
        .map(b => { const r = b.getBoundingClientRect(); return [b.hidden, r.width, r.height,
                    b.querySelectorAll('i').length]; })""")
    assert len(boxes) == 2
    for hidden, w, h, dots in boxes:
        assert not hidden and w > 20 and h > 20 and dots == 5
    assert text(drv, "#verify-notes") == ""  # one face in each: no "several faces" note
    shot = Path(os.environ.get("FACEVERIFY_DEMO_SCREENSHOT") or tmp_path / "demo.png")
    if not shot.is_absolute():
        shot = ROOT / shot
    save_screenshot(drv, shot)
    assert Image.open(shot).size[0] == DESKTOP[0]
    drv.set_window_size(*DESKTOP)

    # Two people: Colin Powell and Tony Blair (replacing the second photo).
    choose(drv, "image2", photos["blair"])
    assert not visible(drv, "#verify-result")  # a stale verdict is cleared at once
    assert submit(drv, "verify-button", "verify-result", "verify-error") == "result"
    diff = api_verify(server, photos["powell_a"], photos["blair"])
    verdict = text(drv, "#verdict")
    assert ("Same person" in verdict) == diff["verified"], (verdict, diff)
    if must_be_right:
        assert "Different people" in verdict, verdict
    assert text(drv, "#distance") == f"{diff['distance']:.3f}"
    assert severe_console_errors(drv) == []


def test_several_faces_and_the_services_errors_have_clear_messages(driver, server, photos):
    drv = driver
    open_page(drv, server)

    # Several faces: the note says how many and that the largest was used.
    assert verify_pair(drv, photos["group"], photos["powell_b"]) == "result"
    found = api_verify(server, photos["group"], photos["powell_b"])["faces"][0]["faces_found"]
    assert found >= 2
    assert f"used the largest of {found}" in text(drv, "#verify-notes")
    assert "first photo" in text(drv, "#verify-notes").lower()

    # A text file (dropped on the zone, through the drop handler): not an image.
    drv.execute_script("""
        const dt = new DataTransfer();
        dt.items.add(new File(['this is not a photo'], 'notes.txt', {type: 'text/plain'}));
        const zone = document.querySelector('[data-field=image2] .drop-target');
        zone.dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true,
                                                  cancelable: true}));""")
    wait_for(drv, "document.getElementById('image2').files.length === 1 && "
                  "document.getElementById('image2').files[0].name === 'notes.txt'")
    assert "notes.txt" in text(drv, "#image2-status")
    assert submit(drv, "verify-button", "verify-result", "verify-error") == "error"
    msg = text(drv, "#verify-error")
    assert "The second photo is not a readable image." in msg, msg
    assert "invalid_image (HTTP 400)" in msg
    assert drv.find_element("id", "verify-error").get_attribute("role") == "alert"

    # The same through the file picker on the first photo.
    choose(drv, "image1", photos["text"])
    choose(drv, "image2", photos["powell_b"])
    assert submit(drv, "verify-button", "verify-result", "verify-error") == "error"
    assert "The first photo is not a readable image." in text(drv, "#verify-error")

    # Too large, unsupported format, no face.
    choose(drv, "image1", photos["big"])
    assert submit(drv, "verify-button", "verify-result", "verify-error") == "error"
    msg = text(drv, "#verify-error")
    assert "The first photo is too large." in msg and "payload_too_large" in msg, msg
    choose(drv, "image1", photos["ppm"])
    assert submit(drv, "verify-button", "verify-result", "verify-error") == "error"
    msg = text(drv, "#verify-error")
    assert "file format the service does not accept" in msg and "JPEG, PNG" in msg, msg
    blank = photos["text"].with_name("blank.png")
    Image.new("RGB", (200, 200), (120, 160, 200)).save(blank)
    choose(drv, "image1", blank)
    assert submit(drv, "verify-button", "verify-result", "verify-error") == "error"
    assert "No face found in the first photo." in text(drv, "#verify-error")

    # Overloaded (503 + Retry-After) cannot be provoked on demand from a browser: the page's
    # message for the service's exact reply, served through a stubbed fetch.
    drv.execute_script("""
        window.__realFetch = window.fetch;
        window.fetch = async () => new Response(JSON.stringify({error: {code: 'overloaded',
            message: 'the encoder queue is full (256 of 256 faces waiting)', field: null}}),
            {status: 503, headers: {'Content-Type': 'application/json', 'Retry-After': '2'}});""")
    choose(drv, "image1", photos["powell_a"])
    assert submit(drv, "verify-button", "verify-result", "verify-error") == "error"
    msg = text(drv, "#verify-error")
    assert "The service is busy right now." in msg and "Try again in 2 seconds" in msg, msg
    drv.execute_script("window.fetch = window.__realFetch")
    assert submit(drv, "verify-button", "verify-result", "verify-error") == "result"

    # Missing photo: a message before any request.
    drv.get(server.url + "/")
    choose(drv, "image1", photos["powell_a"])
    assert submit(drv, "verify-button", "verify-result", "verify-error") == "error"
    assert "Choose the second photo too." in text(drv, "#verify-error")


def test_api_key_lives_in_session_storage_and_is_sent(driver, server, photos):
    drv = driver
    drv.get(server.url + "/")
    drv.execute_script("sessionStorage.clear(); localStorage.clear()")
    open_page(drv, server, key=None)
    assert verify_pair(drv, photos["powell_a"], photos["powell_b"]) == "error"
    msg = text(drv, "#verify-error")
    assert "This server needs an API key." in msg and "Enter it" in msg, msg
    assert drv.switch_to.active_element.get_attribute("id") == "api-key"

    drv.switch_to.active_element.send_keys("wrong-key")
    assert submit(drv, "verify-button", "verify-result", "verify-error") == "error"
    assert "was not accepted" in text(drv, "#verify-error")

    key = drv.find_element("id", "api-key")
    key.clear()
    key.send_keys(API_KEY)
    assert submit(drv, "verify-button", "verify-result", "verify-error") == "result"
    assert drv.execute_script("return sessionStorage.getItem('faceverify.apiKey')") == API_KEY
    assert drv.execute_script("return localStorage.length") == 0
    assert key.get_attribute("type") == "password"
    drv.refresh()
    wait_for(drv, "document.readyState === 'complete'")
    assert drv.find_element("id", "api-key").get_attribute("value") == API_KEY
    drv.execute_script("const k = document.getElementById('api-key'); k.value = '';"
                       "k.dispatchEvent(new Event('input'))")
    assert drv.execute_script("return sessionStorage.getItem('faceverify.apiKey')") is None


def test_embed_tab_shows_the_size_and_copies_the_vector(driver, server, photos, weights):
    drv = driver
    open_page(drv, server)
    # Keyboard: the tabs follow the ARIA pattern (arrow keys move and select).
    from selenium.webdriver.common.keys import Keys
    drv.find_element("id", "tab-verify").click()
    drv.switch_to.active_element.send_keys(Keys.ARROW_RIGHT)
    assert drv.switch_to.active_element.get_attribute("id") == "tab-embed"
    assert visible(drv, "#embed-button") and not visible(drv, "#verify-button")
    assert drv.find_element("id", "tab-embed").get_attribute("aria-selected") == "true"

    choose(drv, "image", photos["powell_a"])
    assert submit(drv, "embed-button", "embed-result", "embed-error") == "result"
    r = httpx.post(server.url + "/embed", headers={"X-API-Key": API_KEY}, timeout=60,
                   files={"image": ("a.jpg", photos["powell_a"].read_bytes())})
    dim = r.json()["dim"]
    assert f"{dim}-dimensional embedding" in text(drv, "#embed-title")
    shown = json.loads(drv.find_element("id", "vector").get_attribute("value"))
    assert len(shown) == dim
    assert np.allclose(shown, r.json()["embedding"], atol=1e-4)
    wait_for(drv, f"document.getElementById('crop').naturalWidth === {crop_size(weights[0])}",
             what="embed crop")
    assert visible(drv, "#panel-embed .face-box")

    drv.find_element("id", "copy-button").click()
    status = wait_for(drv, "document.getElementById('copy-status').textContent")
    assert status == f"Copied {dim} numbers to the clipboard.", status
    pasted = drv.execute_async_script(
        "const done = arguments[0]; navigator.clipboard.readText().then(done, e => done(null))")
    if pasted is not None:  # reading back needs the clipboard permission granted above
        assert json.loads(pasted) == shown

    # Keyboard only: Tab reaches the file input of the embed zone (focus ring on the zone).
    drv.find_element("id", "tab-embed").click()
    drv.switch_to.active_element.send_keys(Keys.TAB)
    assert drv.switch_to.active_element.get_attribute("id") == "image"


def test_labels_and_a_narrow_screen(driver, server, photos, tmp_path, weights):
    drv = driver
    open_page(drv, server, size=NARROW)
    # Every control has an accessible name.
    unnamed = drv.execute_script("""return [...document.querySelectorAll(
        'input, textarea, button, select')].filter(e => !((e.labels && e.labels.length) ||
        e.getAttribute('aria-label') || (e.tagName === 'BUTTON' && e.textContent.trim())))
        .map(e => e.outerHTML)""")
    assert unnamed == []
    assert drv.execute_script("return document.documentElement.lang") == "en"
    assert no_horizontal_scroll(drv)
    assert verify_pair(drv, photos["powell_a"], photos["blair"]) == "result"
    wait_for(drv, f"document.getElementById('crop2').naturalWidth === {crop_size(weights[0])}")
    assert no_horizontal_scroll(drv)
    # The two drop zones stack on a narrow screen.
    tops = drv.execute_script("return [...document.querySelectorAll('#panel-verify .drop')]"
                              ".map(d => d.getBoundingClientRect().top)")
    assert tops[1] > tops[0] + 50
    assert drv.save_screenshot(str(tmp_path / "narrow.png"))
    drv.set_window_size(*DESKTOP)


def test_identify_tab_enrolls_lists_searches_and_deletes(driver, server, photos, weights,
                                                         tmp_path):
    from selenium.webdriver.common.keys import Keys
    drv, must_be_right = driver, weights[1]
    open_page(drv, server)
    # Keyboard: End on the tab list selects the last tab, Identify.
    drv.find_element("id", "tab-verify").click()
    drv.switch_to.active_element.send_keys(Keys.END)
    assert drv.switch_to.active_element.get_attribute("id") == "tab-identify"
    assert drv.find_element("id", "tab-identify").get_attribute("aria-selected") == "true"
    assert drv.find_element("id", "tab-verify").get_attribute("aria-selected") == "false"
    assert drv.find_element("id", "panel-identify").get_attribute("role") == "tabpanel"
    assert visible(drv, "#enroll-button") and not visible(drv, "#verify-button")
    assert drv.current_url.endswith("#identify")
    assert drv.find_element("id", "gallery").get_attribute("value") == "demo"
    # The server's gallery store starts empty: no gallery "demo" yet.
    wait_for(drv, "document.getElementById('subjects-status').textContent"
                  ".includes('no subjects yet')", what="empty gallery")

    # Enroll two people; each shows up in the list at once.
    assert enroll(drv, "colin_powell", photos["powell_a"]) == "result"
    assert "Enrolled a face of colin_powell in gallery “demo”" in text(drv, "#enroll-result")
    wait_for(drv, "document.querySelectorAll('#subject-list li').length === 1")
    assert enroll(drv, "tony_blair", photos["blair"]) == "result"
    wait_for(drv, "document.querySelectorAll('#subject-list li').length === 2")
    assert listed_subjects(drv) == [["colin_powell", "1 face"], ["tony_blair", "1 face"]]
    assert "2 subjects in gallery “demo”" in text(drv, "#subjects-status")

    # Errors: a name the API refuses is caught before any request; a photo without a face is
    # the service's no_face_detected, in words.
    assert enroll(drv, "colin powell", photos["powell_b"]) == "error"
    msg = text(drv, "#enroll-error")
    assert "The subject name is not a valid name." in msg and "no spaces" in msg, msg
    blank = tmp_path / "blank.png"
    Image.new("RGB", (200, 200), (120, 160, 200)).save(blank)
    assert enroll(drv, "nobody", blank) == "error"
    msg = text(drv, "#enroll-error")
    assert "No face found in the photo." in msg and "no_face_detected (HTTP 422)" in msg, msg
    assert len(listed_subjects(drv)) == 2

    # Search with another photo of Colin Powell: the candidates, nearest first, as the API says.
    choose(drv, "probe-image", photos["powell_b"])
    wait_for(drv, "document.querySelector('#panel-identify [data-field=probe-image] "
                  ".preview-img').naturalWidth > 0", what="probe preview")
    assert submit(drv, "search-button", "search-result", "search-error") == "result"
    assert visible(drv, "#panel-identify [data-field=probe-image] .preview-img")
    assert visible(drv, "#panel-identify [data-field=probe-image] .face-box")
    rows = drv.execute_script("""return [...document.querySelectorAll('#candidates tbody tr')]
        .map(tr => [...tr.children].map(c => c.textContent.trim()))""")
    api = api_identify(server, "demo", photos["powell_b"])
    assert [r[1] for r in rows] == [c["subject"] for c in api["candidates"]]
    assert [r[2] for r in rows] == [f"{c['distance']:.3f}" for c in api["candidates"]]
    assert [r[3] for r in rows] == [f"{c['similarity']:.3f}" for c in api["candidates"]]
    assert [r[4] for r in rows] == ["✓ Match" if c["match"] else "✗ No match"
                                    for c in api["candidates"]]
    assert [r[0] for r in rows] == ["1", "2"]
    assert [float(r[2]) for r in rows] == sorted(float(r[2]) for r in rows)
    assert f"{api['threshold']:.3f}" in text(drv, "#candidates-caption")
    if must_be_right:
        assert rows[0][1] == "colin_powell" and rows[0][4] == "✓ Match", rows
        assert rows[1][1] == "tony_blair" and rows[1][4] == "✗ No match", rows
        assert "Best match: colin_powell" in text(drv, "#search-verdict")
    save_screenshot(drv, tmp_path / "identify.png")
    drv.set_window_size(*NARROW)  # one column, nothing wider than the screen
    assert no_horizontal_scroll(drv)
    drv.set_window_size(*DESKTOP)

    # Delete a subject: it leaves the list (and the gallery).
    drv.find_element("css selector", "#subject-list li[data-subject=tony_blair] button").click()
    wait_for(drv, "!document.querySelector('#subject-list li[data-subject=tony_blair]')",
             what="tony_blair gone")
    wait_for(drv, "document.getElementById('subjects-status').textContent"
                  ".includes('Deleted tony_blair')")
    assert listed_subjects(drv) == [["colin_powell", "1 face"]]
    r = httpx.get(f"{server.url}/galleries/demo/subjects", headers={"X-API-Key": API_KEY})
    assert r.json()["subjects"] == [{"subject": "colin_powell", "faces": 1}]

    # A stranger to the gallery now (Tony Blair, deleted): no match, with the threshold used
    # and why it is that threshold (FPIR at the gallery's size).
    choose(drv, "probe-image", photos["blair"])
    assert submit(drv, "search-button", "search-result", "search-error") == "result"
    api = api_identify(server, "demo", photos["blair"])
    assert api["gallery_faces"] == 1
    if must_be_right:
        verdict = text(drv, "#search-verdict")
        assert "No match in" in verdict and f"{api['threshold']:.3f}" in verdict, verdict
    if api["threshold_source"] == "fpir":
        caption = text(drv, "#candidates-caption")
        assert "false-positive identification rate" in caption and "1 face" in caption, caption

    # A gallery that does not exist: searched, it says so; listed, it is empty.
    gallery = drv.find_element("id", "gallery")
    gallery.clear()
    gallery.send_keys("nobody-here", Keys.ENTER)
    wait_for(drv, "document.getElementById('subjects-status').textContent"
                  ".includes('“nobody-here” has no subjects yet')")
    assert listed_subjects(drv) == []
    assert submit(drv, "search-button", "search-result", "search-error") == "error"
    assert "Gallery “nobody-here” does not exist yet." in text(drv, "#search-error")
    # No script errors or CSP refusals (the 404s of the absent gallery are the browser's
    # "Failed to load resource" lines, expected).
    assert [m for m in severe_console_errors(drv) if "Failed to load resource" not in m] == []

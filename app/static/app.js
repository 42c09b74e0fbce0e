// faceverify demo page: plain JavaScript, no build step, no external assets.
// Talks to this service only: POST verify?return_crops=true and embed?return_crops=true, and
// the gallery routes (galleries/{gallery}/subjects…, galleries/{gallery}/identify) for the
// Identify tab (relative URLs, so the page also works behind a path prefix).
"use strict";
(() => {
  const $ = (sel, root = document) => root.querySelector(sel);
  const $$ = (sel, root = document) => [...root.querySelectorAll(sel)];
  const KEY_STORE = "faceverify.apiKey";
  const PHOTO = { image1: "the first photo", image2: "the second photo", image: "the photo" };
  const NAMES = { gallery: "gallery name", subject: "subject name" };
  const NAME_RE = /^[A-Za-z0-9._-]{1,64}$/;
  const NAME_RULE = "Use 1 to 64 letters (A-Z, a-z), digits, dots, underscores or hyphens; " +
    "no spaces.";
  const cap = (s) => s.charAt(0).toUpperCase() + s.slice(1);

  // ------------------------------------------------------------------ API key (session only)
  const keyInput = $("#api-key");
  try { keyInput.value = sessionStorage.getItem(KEY_STORE) || ""; } catch (_) { /* disabled */ }
  keyInput.addEventListener("input", () => {
    try {
      const key = keyInput.value.trim();
      if (key) sessionStorage.setItem(KEY_STORE, key); else sessionStorage.removeItem(KEY_STORE);
    } catch (_) { /* storage disabled: the key lives in the field only */ }
  });
  function authHeaders() {
    const key = keyInput.value.trim();
    return key ? { "X-API-Key": key } : {};
  }

  // ------------------------------------------------------------------------------- tabs
  const tabs = $$("[role=tab]");
  function selectTab(tab, focus) {
    for (const t of tabs) {
      const on = t === tab;
      t.setAttribute("aria-selected", String(on));
      t.tabIndex = on ? 0 : -1;
      $("#" + t.getAttribute("aria-controls")).hidden = !on;
    }
    if (focus) tab.focus();
    history.replaceState(null, "", "#" + tab.id.slice("tab-".length));
    if (tab.id === "tab-identify") onIdentifyShown();
  }
  for (const tab of tabs) {
    tab.addEventListener("click", () => selectTab(tab, false));
    tab.addEventListener("keydown", (ev) => {
      const i = tabs.indexOf(tab);
      const next = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: tabs.length - 1 }[ev.key];
      if (next === undefined) return;
      ev.preventDefault();
      selectTab(tabs[(next + tabs.length) % tabs.length], true);
    });
  }
  // #embed or #identify in the address opens that tab (after the rest of the page is wired).
  const initialTab = tabs.find((t) => location.hash === "#" + t.id.slice("tab-".length));

  // ------------------------------------------------------------------------- drop zones
  const formatBytes = (n) => n < 1024 ? `${n} B` : n < 1048576 ? `${(n / 1024).toFixed(0)} KB`
    : `${(n / 1048576).toFixed(1)} MB`;

  // A file dropped outside a zone must not replace the page.
  for (const type of ["dragover", "drop"]) window.addEventListener(type, (ev) => ev.preventDefault());

  function setupDrop(drop, onChange) {
    const input = $("input[type=file]", drop);
    const target = $(".drop-target", drop);
    const preview = $(".preview", drop);
    const img = $(".preview-img", drop);
    const status = $(".drop-status", drop);
    let url = null;
    let extraNote = "";

    function show() {
      const file = input.files[0];
      drawFace(drop, null);
      if (url) URL.revokeObjectURL(url);
      url = null;
      drop.classList.toggle("has-file", Boolean(file));
      if (!file) { preview.hidden = true; status.textContent = ""; return; }
      status.textContent = `${file.name} · ${formatBytes(file.size)}${extraNote}`;
      extraNote = "";
      url = URL.createObjectURL(file);
      img.onload = () => { preview.hidden = false; };
      img.onerror = () => {
        preview.hidden = true;
        status.textContent += " · no preview (this browser cannot show it; the service will " +
          "still be asked)";
      };
      img.src = url;
      onChange();
    }
    input.addEventListener("change", show);
    for (const type of ["dragenter", "dragover"]) {
      target.addEventListener(type, (ev) => {
        ev.preventDefault();
        if (ev.dataTransfer) ev.dataTransfer.dropEffect = "copy";
        drop.classList.add("dragging");
      });
    }
    target.addEventListener("dragleave", () => drop.classList.remove("dragging"));
    target.addEventListener("drop", (ev) => {
      ev.preventDefault();
      drop.classList.remove("dragging");
      const files = ev.dataTransfer && ev.dataTransfer.files;
      if (!files || !files.length) return;
      const dt = new DataTransfer();
      dt.items.add(files[0]);
      input.files = dt.files;
      if (files.length > 1) extraNote = ` · ${files.length} files dropped, the first one is used`;
      show();
    });
  }

  // The detected box (and the 5 landmarks) over a preview, in the image's own pixels.
  function drawFace(drop, face) {
    const img = $(".preview-img", drop);
    const box = $(".face-box", drop);
    box.replaceChildren();
    box.hidden = true;
    if (!face || !face.box) return;
    const draw = () => {
      const W = img.naturalWidth, H = img.naturalHeight;
      if (!W || !H) return;
      const clamp = (v, max) => Math.min(Math.max(v, 0), max);
      const [x1, y1, x2, y2] = face.box;
      const l = clamp(x1, W), t = clamp(y1, H), r = clamp(x2, W), b = clamp(y2, H);
      Object.assign(box.style, {
        left: `${(100 * l) / W}%`, top: `${(100 * t) / H}%`,
        width: `${(100 * (r - l)) / W}%`, height: `${(100 * (b - t)) / H}%`,
      });
      for (const [x, y] of face.landmarks || []) {
        const dot = document.createElement("i");
        dot.style.left = `${(100 * (x - l)) / Math.max(r - l, 1)}%`;
        dot.style.top = `${(100 * (y - t)) / Math.max(b - t, 1)}%`;
        box.appendChild(dot);
      }
      box.hidden = false;
    };
    if (img.complete && img.naturalWidth) draw(); else img.addEventListener("load", draw, { once: true });
  }

  // ------------------------------------------------------------------- requests, errors
  async function request(method, path, body) {
    let resp;
    try {
      resp = await fetch(path, { method, body, headers: authHeaders() });
    } catch (err) {
      return { ok: false, status: 0, data: null };
    }
    let data = null;
    if (resp.status !== 204) {
      try { data = await resp.json(); } catch (_) { /* not JSON (e.g. a proxy's page) */ }
    }
    return { ok: resp.ok, status: resp.status, data, retryAfter: resp.headers.get("Retry-After") };
  }
  const post = (path, body) => request("POST", path, body);

  // What a person should read for each of the service's errors.
  function describeError(res) {
    const err = (res.data && res.data.error) || {};
    const who = PHOTO[err.field];
    const Who = who ? cap(who) : "The upload";
    const code = err.code || { 0: "network", 413: "payload_too_large", 415: "unsupported_media_type",
      502: "unreachable", 503: "overloaded", 504: "unreachable" }[res.status];
    const retry = Number(res.retryAfter) || 1;
    switch (code) {
      case "no_face_detected":
        return [`No face found in ${who || "one of the photos"}.`,
          "Use a photo where a face is clearly visible, roughly frontal and at least 20 pixels wide."];
      case "payload_too_large":
        return [`${Who} is too large.`,
          "Use a smaller photo (fewer bytes or fewer pixels); the limit is in the detail below."];
      case "unsupported_media_type":
        return [`${Who} is in a file format the service does not accept.`,
          "Use a JPEG, PNG, WebP, BMP, TIFF or GIF image."];
      case "invalid_image":
        return [`${Who} is not a readable image.`,
          "The file may be empty, damaged, or not an image at all (a text file renamed .jpg, say)."];
      case "overloaded":
        return ["The service is busy right now.",
          `Too many requests are waiting. Try again in ${retry} second${retry === 1 ? "" : "s"}.`];
      case "not_ready":
        return ["The service is still starting up (or shutting down).",
          `Try again in ${retry} second${retry === 1 ? "" : "s"}.`];
      case "unauthorized":
        $("#api-key").focus();
        if (!keyInput.value.trim() && /FACEVERIFY_API_KEYS/.test(err.message || ""))
          return ["Galleries need an API key, and this server has none configured.",
            "The operator sets FACEVERIFY_API_KEYS_FILE (scoped keys) or FACEVERIFY_API_KEYS; " +
            "for a local trial, FACEVERIFY_GALLERY_ALLOW_ANONYMOUS=true."];
        return ["This server needs an API key.", keyInput.value.trim()
          ? "The key entered above was not accepted." : "Enter it in the API key field above."];
      case "forbidden":
        return ["This API key may not do that.", err.message ? cap(err.message) +
          ": its scope (galleries and operations) does not cover it." : ""];
      case "idempotency_conflict":
        return ["This enrollment key was already used for another person.", err.message || ""];
      case "store_stale":
        return ["This server has lost touch with its gallery store.",
          "It will not answer from an out-of-date copy (it could find someone deleted since). " +
          `Try again in ${retry} second${retry === 1 ? "" : "s"}.`];
      case "validation_error":
        if (NAMES[err.field]) return [`The ${NAMES[err.field]} is not a valid name.`, NAME_RULE];
        return ["The request was not accepted.", err.message || ""];
      case "not_found":
        return ["Not found.", err.message ? cap(err.message) + "." : ""];
      case "model_mismatch":
        return ["This gallery was built with other weights than the ones this server runs.",
          "Its faces cannot be compared with this model's; the detail below says what to do."];
      case "store_unavailable":
        return ["The gallery store cannot be reached right now.",
          `Try again in ${retry} second${retry === 1 ? "" : "s"}.`];
      case "internal_error":
        return ["Something went wrong in the service.",
          "Try again; if it keeps happening, give the request id below to the operator."];
      case "network": case "unreachable":
        return ["The service could not be reached.", "Check that it is running, then try again."];
      default:
        return [`The service answered with HTTP ${res.status}.`, ""];
    }
  }

  function showError(el, title, hint, detail) {
    const parts = [Object.assign(document.createElement("strong"), { textContent: title })];
    if (hint) parts.push(Object.assign(document.createElement("p"), { textContent: hint }));
    if (detail) parts.push(Object.assign(document.createElement("p"), { className: "detail", textContent: detail }));
    el.replaceChildren(...parts);
    el.hidden = false;
  }

  function showServiceError(el, res) {
    const [title, hint] = describeError(res);
    const err = res.data && res.data.error;
    const detail = err ? `${err.code} (HTTP ${res.status}): ${err.message}` : res.status ? `HTTP ${res.status}` : "";
    showError(el, title, hint, detail);
  }

  function setBusy(button, busyEl, on) {
    button.disabled = on;
    busyEl.hidden = !on;
    button.form.setAttribute("aria-busy", String(on));
  }

  function faceNotes(list, faces, names) {
    list.replaceChildren();
    faces.forEach((face, i) => {
      if (face && face.faces_found > 1) {
        const li = document.createElement("li");
        li.textContent = `${cap(names[i])}: ${face.faces_found} faces found, used the largest ` +
          `of ${face.faces_found}.`;
        list.appendChild(li);
      }
    });
  }

  function setCrop(img, b64) {
    img.hidden = !b64;
    img.closest("figure").hidden = !b64;
    if (b64) img.src = "data:image/png;base64," + b64;
  }

  function metaLine(data) {
    const m = data.model || {};
    const t = data.timings_ms || {};
    return `Model ${m.name} ${m.version} (sha256 ${String(m.sha256 || "").slice(0, 12)}…) · ` +
      `${Math.round(t.total)} ms in the service: detect ${Math.round(t.detect)} ms, ` +
      `encode ${Math.round(t.encode)} ms in a batch of ${t.batch_size}.`;
  }

  // ----------------------------------------------------------------------------- verify
  const vForm = $("#verify-form");
  const vError = $("#verify-error");
  const vResult = $("#verify-result");
  const vDrops = $$(".drop", vForm);
  let vGen = 0;  // bumped when a photo changes: an answer for the old photos is dropped
  const clearVerify = () => { vGen += 1; vError.hidden = true; vResult.hidden = true; };
  vDrops.forEach((d) => setupDrop(d, clearVerify));

  vForm.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    clearVerify();
    const inputs = vDrops.map((d) => $("input[type=file]", d));
    const missing = inputs.filter((i) => !i.files[0]);
    if (missing.length) {
      showError(vError, missing.length === 2 ? "Choose two photos first." :
        `Choose ${PHOTO[missing[0].name]} too.`, "Drop a photo on each box, or click a box to pick one.");
      missing[0].focus();
      return;
    }
    const body = new FormData();
    inputs.forEach((i) => body.append(i.name, i.files[0]));
    const threshold = $("#threshold").value.trim();
    if (threshold) body.append("threshold", threshold);
    const button = $("#verify-button");
    const gen = vGen;
    setBusy(button, $("#verify-busy"), true);
    const res = await post("verify?return_crops=true", body);
    setBusy(button, $("#verify-busy"), false);
    if (gen !== vGen) return;
    if (!res.ok || !res.data) { showServiceError(vError, res); return; }
    showVerdict(res.data);
  });

  function showVerdict(d) {
    const verdict = $("#verdict");
    const cls = d.verified ? "same" : "different";
    verdict.className = "verdict " + cls;
    verdict.textContent = d.verified ? "✓ Same person" : "✗ Different people";
    const pct = (x) => `${(100 * Math.min(Math.max(x, 0), 2)) / 2}%`;
    $("#gauge-same").style.width = pct(d.threshold);
    $("#gauge-threshold").style.left = pct(d.threshold);
    const label = $("#gauge-label");
    label.textContent = `threshold ${d.threshold.toFixed(3)}`;
    label.style.left = pct(d.threshold);
    label.style.transform = d.threshold < 0.2 ? "none" : d.threshold > 1.8 ? "translateX(-100%)" : "";
    const needle = $("#gauge-needle");
    needle.style.left = pct(d.distance);
    needle.className = "gauge-needle " + cls;
    $("#gauge").setAttribute("aria-label", `Distance ${d.distance.toFixed(3)} on a scale from 0 ` +
      `to 2; below the threshold ${d.threshold.toFixed(3)} means the same person.`);
    $("#distance").textContent = d.distance.toFixed(3);
    $("#threshold-used").textContent = d.threshold.toFixed(3);
    $("#similarity").textContent = d.similarity.toFixed(3);
    faceNotes($("#verify-notes"), d.faces || [], ["the first photo", "the second photo"]);
    const crops = d.crops || [];
    setCrop($("#crop1"), crops[0]);
    setCrop($("#crop2"), crops[1]);
    vDrops.forEach((drop, i) => drawFace(drop, (d.faces || [])[i]));
    $("#verify-meta").textContent = metaLine(d);
    vResult.hidden = false;
    verdict.focus();
  }

  // ------------------------------------------------------------------------------ embed
  const eForm = $("#embed-form");
  const eError = $("#embed-error");
  const eResult = $("#embed-result");
  const eDrop = $(".drop", eForm);
  let eGen = 0;
  const clearEmbed = () => {
    eGen += 1;
    eError.hidden = true;
    eResult.hidden = true;
    $("#copy-status").textContent = "";
  };
  setupDrop(eDrop, clearEmbed);

  eForm.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    clearEmbed();
    const input = $("input[type=file]", eDrop);
    if (!input.files[0]) {
      showError(eError, "Choose a photo first.", "Drop a photo on the box, or click it to pick one.");
      input.focus();
      return;
    }
    const body = new FormData();
    body.append("image", input.files[0]);
    const button = $("#embed-button");
    const gen = eGen;
    setBusy(button, $("#embed-busy"), true);
    const res = await post("embed?return_crops=true", body);
    setBusy(button, $("#embed-busy"), false);
    if (gen !== eGen) return;
    if (!res.ok || !res.data) { showServiceError(eError, res); return; }
    const d = res.data;
    const title = $("#embed-title");
    title.textContent = `${d.dim}-dimensional embedding`;
    title.dataset.dim = String(d.dim);
    $("#vector").value = JSON.stringify(d.embedding);
    faceNotes($("#embed-notes"), [d.face], ["the photo"]);
    setCrop($("#crop"), (d.crops || [])[0]);
    drawFace(eDrop, d.face);
    $("#embed-meta").textContent = `A unit vector (L2 norm 1): compare two with the Euclidean ` +
      `distance, as /verify does. ` + metaLine(d);
    eResult.hidden = false;
    title.focus();
  });

  $("#copy-button").addEventListener("click", async () => {
    const text = $("#vector").value;
    const status = $("#copy-status");
    const n = text ? JSON.parse(text).length : 0;
    try {
      await navigator.clipboard.writeText(text);
      status.textContent = `Copied ${n} numbers to the clipboard.`;
    } catch (_) {
      // No clipboard API (e.g. plain http on another host): select it and copy the old way.
      const area = $("#vector");
      area.focus();
      area.select();
      let ok = false;
      try { ok = document.execCommand("copy"); } catch (__) { ok = false; }
      status.textContent = ok ? `Copied ${n} numbers to the clipboard.`
        : "Selected: press Ctrl+C (or ⌘C) to copy.";
    }
  });

  // --------------------------------------------------------------------------- identify
  // 1:N against a gallery stored by the service: enroll, list, delete, search (top 5).
  const TOP_K = 5;
  const PAGE = 100;
  const enc = encodeURIComponent;
  const galleryInput = $("#gallery");
  const galleryStatus = $("#gallery-status");
  const subjectInput = $("#subject");
  const enForm = $("#enroll-form");
  const enDrop = $(".drop", enForm);
  const enError = $("#enroll-error");
  const enResult = $("#enroll-result");
  const sList = $("#subject-list");
  const sStatus = $("#subjects-status");
  const sError = $("#subjects-error");
  const sMore = $("#subjects-more");
  const seForm = $("#search-form");
  const seDrop = $(".drop", seForm);
  const seError = $("#search-error");
  const seResult = $("#search-result");
  let listGen = 0, enGen = 0, seGen = 0;
  let listed = null;  // the gallery the subject list shows
  let nextCursor = null;
  const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;
  const galleryPath = (g) => `galleries/${enc(g)}`;
  // 404 for the gallery itself (not for a subject, and not "no such route": galleries off).
  const noGallery = (res) => res.status === 404 && res.data && res.data.error &&
    /^no gallery /.test(res.data.error.message || "");

  // A name from its field, or null (with the rule shown, the field marked and focused).
  function checkedName(input, label, errorEl, focus) {
    const name = input.value.trim();
    if (NAME_RE.test(name)) { input.removeAttribute("aria-invalid"); return name; }
    input.setAttribute("aria-invalid", "true");
    if (errorEl) {
      showError(errorEl, name ? `The ${label} is not a valid name.` : `Enter a ${label} first.`,
        NAME_RULE);
    }
    if (focus) input.focus();
    return null;
  }

  function onIdentifyShown() { loadSubjects(false); }

  function galleryChanged() {
    enGen += 1; seGen += 1;
    enError.hidden = true; enResult.hidden = true;
    seError.hidden = true; seResult.hidden = true;
    loadSubjects(false);
  }
  galleryInput.addEventListener("change", galleryChanged);
  galleryInput.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter") { ev.preventDefault(); galleryChanged(); }
  });

  // ---------------------------------------------------------------------- subject list
  async function loadSubjects(more) {
    const gen = ++listGen;
    sError.hidden = true;
    const g = checkedName(galleryInput, "gallery name", null, false);
    galleryStatus.textContent = g ? "" : "Not a valid gallery name. " + NAME_RULE;
    if (!g) {
      listed = null;
      sList.replaceChildren();
      sMore.hidden = true;
      sStatus.textContent = "Enter a valid gallery name above to see its subjects.";
      return;
    }
    const q = new URLSearchParams({ limit: String(PAGE) });
    if (more && nextCursor && listed === g) q.set("cursor", nextCursor);
    else more = false;
    if (!more && listed !== g) sList.replaceChildren();
    sStatus.textContent = `Loading the subjects of “${g}”…`;
    const res = await request("GET", `${galleryPath(g)}/subjects?${q}`);
    if (gen !== listGen) return;  // a newer load (another gallery, a refresh) wins
    if (!more) sList.replaceChildren();
    listed = g;
    nextCursor = null;
    sMore.hidden = true;
    if (noGallery(res)) {
      sStatus.textContent = `Gallery “${g}” has no subjects yet: enroll a face to create it.`;
      return;
    }
    if (!res.ok || !res.data) {
      sStatus.textContent = "";
      showServiceError(sError, res);
      return;
    }
    for (const s of res.data.subjects) sList.appendChild(subjectItem(g, s));
    nextCursor = res.data.next || null;
    sMore.hidden = !nextCursor;
    const n = sList.children.length;
    sStatus.textContent = n ? `${plural(n, "subject")}${nextCursor ? " so far" : ""} in gallery ` +
      `“${g}”.` : `Gallery “${g}” has no subjects yet: enroll a face to add one.`;
  }

  function subjectItem(g, s) {
    const li = document.createElement("li");
    li.dataset.subject = s.subject;
    const name = Object.assign(document.createElement("span"),
      { className: "subject-name", textContent: s.subject });
    const faces = Object.assign(document.createElement("span"),
      { className: "subject-faces", textContent: plural(s.faces, "face") });
    const del = Object.assign(document.createElement("button"),
      { type: "button", className: "delete", textContent: "Delete" });
    del.setAttribute("aria-label", `Delete ${s.subject} (${plural(s.faces, "face")})`);
    del.addEventListener("click", () => deleteSubject(g, s.subject, li, del));
    li.append(name, faces, del);
    return li;
  }

  async function deleteSubject(g, subject, li, button) {
    sError.hidden = true;
    button.disabled = true;
    const res = await request("DELETE", `${galleryPath(g)}/subjects/${enc(subject)}`);
    // 404: already gone (deleted elsewhere); the list is refreshed either way.
    if (!res.ok && res.status !== 404) {
      button.disabled = false;
      showServiceError(sError, res);
      return;
    }
    const after = li.nextElementSibling || li.previousElementSibling;
    const afterName = after && after.dataset.subject;
    li.remove();
    seGen += 1;  // a shown search may name the deleted subject: search again to see the change
    seResult.hidden = true;
    await loadSubjects(false);
    sStatus.textContent = `Deleted ${subject} from gallery “${g}”. ` + sStatus.textContent;
    // Keep the keyboard where it was: the neighbouring subject's button, else the refresh one.
    const next = afterName && $$("li", sList).find((x) => x.dataset.subject === afterName);
    (next ? $("button.delete", next) : $("#subjects-refresh")).focus();
  }

  sMore.addEventListener("click", () => loadSubjects(true));
  $("#subjects-refresh").addEventListener("click", () => loadSubjects(false));

  // ---------------------------------------------------------------------------- enroll
  const clearEnroll = () => { enGen += 1; enError.hidden = true; enResult.hidden = true; };
  setupDrop(enDrop, clearEnroll);
  subjectInput.addEventListener("input", () => { enError.hidden = true; enResult.hidden = true; });

  enForm.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    clearEnroll();
    const g = checkedName(galleryInput, "gallery name", enError, true);
    if (!g) return;
    const subject = checkedName(subjectInput, "subject name", enError, true);
    if (!subject) return;
    const input = $("input[type=file]", enDrop);
    if (!input.files[0]) {
      showError(enError, "Choose a photo to enroll first.",
        "Drop a photo on the box, or click it to pick one.");
      input.focus();
      return;
    }
    const body = new FormData();
    body.append("image", input.files[0]);
    const gen = enGen;
    setBusy($("#enroll-button"), $("#enroll-busy"), true);
    const res = await post(`${galleryPath(g)}/subjects/${enc(subject)}/faces`, body);
    setBusy($("#enroll-button"), $("#enroll-busy"), false);
    if (gen !== enGen) return;
    if (!res.ok || !res.data) { showServiceError(enError, res); return; }
    const d = res.data;
    const t = d.timings_ms || {};
    $("#enroll-message").textContent = `Enrolled a face of ${d.subject} in gallery ` +
      `“${d.gallery}” (face id ${String(d.face_id).slice(0, 8)}…, ${Math.round(t.total)} ms).`;
    faceNotes($("#enroll-notes"), [d.face], ["the photo"]);
    drawFace(enDrop, d.face);
    enResult.hidden = false;
    loadSubjects(false);
  });

  // ---------------------------------------------------------------------------- search
  const clearSearch = () => { seGen += 1; seError.hidden = true; seResult.hidden = true; };
  setupDrop(seDrop, clearSearch);

  seForm.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    clearSearch();
    const g = checkedName(galleryInput, "gallery name", seError, true);
    if (!g) return;
    const input = $("input[type=file]", seDrop);
    if (!input.files[0]) {
      showError(seError, "Choose a photo to search with first.",
        "Drop a photo on the box, or click it to pick one.");
      input.focus();
      return;
    }
    const body = new FormData();
    body.append("image", input.files[0]);
    body.append("top_k", String(TOP_K));
    const gen = seGen;
    setBusy($("#search-button"), $("#search-busy"), true);
    const res = await post(`${galleryPath(g)}/identify`, body);
    setBusy($("#search-button"), $("#search-busy"), false);
    if (gen !== seGen) return;
    if (noGallery(res)) {
      showError(seError, `Gallery “${g}” does not exist yet.`,
        "Enroll at least one face in it first (the Enroll box above), then search again.",
        `not_found (HTTP 404): ${res.data.error.message}`);
      return;
    }
    if (!res.ok || !res.data) { showServiceError(seError, res); return; }
    showCandidates(g, res.data);
  });

  function showCandidates(g, d) {
    const cands = [...(d.candidates || [])].sort((a, b) => a.distance - b.distance);
    const title = $("#search-verdict");
    const best = cands[0];
    if (!best) {
      title.className = "verdict";
      title.textContent = `Gallery “${g}” has no faces to compare with.`;
    } else if (best.match) {
      title.className = "verdict same";
      title.textContent = `✓ Best match: ${best.subject}`;
    } else {
      title.className = "verdict different";
      title.textContent = `✗ No match in “${g}”: the nearest, ${best.subject}, is at ` +
        `${best.distance.toFixed(3)}, beyond the threshold ${d.threshold.toFixed(3)}`;
    }
    $("#candidates").hidden = !best;
    const why = {
      fpir: `it holds a ${+(100 * d.fpir_target).toPrecision(3)} % false-positive ` +
        `identification rate at this gallery's ${plural(d.gallery_faces, "face")} (a ` +
        "stranger matches somebody that often), so it tightens as the gallery grows",
      setting: "the server fixes it (FACEVERIFY_GALLERY_THRESHOLD)",
      request: "this search asked for it",
      card: "the model card's FAR 0.1 % threshold",
    }[d.threshold_source] || "";
    $("#candidates-caption").textContent = `The ${plural(cands.length, "nearest subject")} in ` +
      `“${g}”, nearest first (each by its nearest face). A distance below the threshold ` +
      `${d.threshold.toFixed(3)} is a match; ${why}.` +
      (d.threshold_note ? ` Note: ${d.threshold_note}.` : "");
    const rows = cands.map((c, i) => {
      const tr = document.createElement("tr");
      if (c.match) tr.className = "is-match";
      const cell = (txt, cls) => Object.assign(document.createElement("td"),
        { textContent: txt, className: cls || "" });
      const badge = Object.assign(document.createElement("span"), {
        className: "badge " + (c.match ? "same" : "different"),
        textContent: c.match ? "✓ Match" : "✗ No match" });
      const matchCell = cell("", "match");
      matchCell.appendChild(badge);
      const subjectCell = Object.assign(document.createElement("th"),
        { scope: "row", textContent: c.subject, className: "subject" });
      tr.append(cell(String(i + 1), "rank"), subjectCell, cell(c.distance.toFixed(3), "num distance"),
        cell(c.similarity.toFixed(3), "num similarity"), matchCell);
      return tr;
    });
    $("#candidates tbody").replaceChildren(...rows);
    faceNotes($("#search-notes"), [d.face], ["the photo"]);
    drawFace(seDrop, d.face);
    const search = (d.timings_ms || {}).search;
    $("#search-meta").textContent = metaLine(d) +
      (search === undefined ? "" : ` Search ${search.toFixed(2)} ms.`);
    seResult.hidden = false;
    title.focus();
  }

  if (initialTab) selectTab(initialTab, false);
})();

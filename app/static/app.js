// faceverify demo page: plain JavaScript, no build step, no external assets.
// Talks to this service only: POST verify?return_crops=true and embed?return_crops=true
// (relative URLs, so the page also works behind a path prefix).
"use strict";
(() => {
  const $ = (sel, root = document) => root.querySelector(sel);
  const $$ = (sel, root = document) => [...root.querySelectorAll(sel)];
  const KEY_STORE = "faceverify.apiKey";
  const PHOTO = { image1: "the first photo", image2: "the second photo", image: "the photo" };
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
    history.replaceState(null, "", tab.id === "tab-embed" ? "#embed" : "#verify");
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
  if (location.hash === "#embed") selectTab($("#tab-embed"), false);

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
  async function post(path, body) {
    let resp;
    try {
      resp = await fetch(path, { method: "POST", body, headers: authHeaders() });
    } catch (err) {
      return { ok: false, status: 0, data: null };
    }
    let data = null;
    try { data = await resp.json(); } catch (_) { /* not JSON (e.g. a proxy's page) */ }
    return { ok: resp.ok, status: resp.status, data, retryAfter: resp.headers.get("Retry-After") };
  }

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
        return ["This server needs an API key.", keyInput.value.trim()
          ? "The key entered above was not accepted." : "Enter it in the API key field above."];
      case "validation_error":
        return ["The request was not accepted.", err.message || ""];
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
})();

"""Service settings, read from environment variables with the prefix `FACEVERIFY_`.

Every field below is documented, with its default, in docs/api.md ("Settings").
Lists (API keys) are comma-separated: `FACEVERIFY_API_KEYS=key-one,key-two`.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from model.shipped import WEIGHTS_DIR

ENV_PREFIX = "FACEVERIFY_"
# the shipped encoder: weights/ in a checkout, model/weights in an installed package
DEFAULT_WEIGHTS = str(WEIGHTS_DIR / "faceverify-encoder.safetensors")
PILLOW_MAX_PIXELS = 178_956_970  # 2 x PIL.Image.MAX_IMAGE_PIXELS: Pillow refuses more
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore",
                                      validate_default=True)

    # --- model -------------------------------------------------------------------------
    weights: Path = Field(Path(DEFAULT_WEIGHTS), description=(
        "Encoder weights (safetensors); the model card `<weights>.json` beside it is "
        "required and its sha256 is verified at start-up."))
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N (auto: the first GPU "
                                            "when there is one, else the CPU).")
    detector: Literal["auto", "yunet", "mtcnn"] = Field("auto", description=(
        "The face detector: yunet (ONNX Runtime on the CPU, ~3.4 ms a 250 px photo) or mtcnn "
        "(torch, ~45 ms). auto: yunet for encoders whose crops dlib's shape predictor places "
        "(the default weights), mtcnn for those trained on MTCNN's own points (the student)."
        " docs/accuracy.md has both measured."))
    detect_device: str | None = Field(None, description="Device for MTCNN face detection "
                                                        "(YuNet always runs on the CPU); "
                                                        "unset = same as `device`.")
    precision: Literal["auto", "fp32", "fp16"] = Field("auto", description=(
        "Encoder precision. auto: fp16 on CUDA when the warm-up check shows the embeddings "
        "stay within `fp16_tolerance` of fp32, else fp32. Always fp32 on the CPU."))
    runtime: Literal["auto", "torch", "onnxruntime"] = Field("auto", description=(
        "Where the encoder runs on the CPU. auto: ONNX Runtime (exported from the torch module "
        "at start-up) when it is installed and its embeddings agree with torch's within 1e-4, "
        "else torch; onnxruntime: the same, but failing to start is an error. Always torch "
        "on CUDA."))
    int8: Literal["auto", "on", "off"] = Field("auto", description=(
        "The encoder as an int8 graph on the CPU (`<weights>.int8.onnx`, made from these "
        "weights by `python -m model.convert.quantize`; its card names the weights by sha256): ~2.4x "
        "faster per face, LFW View 2 within 0.05 points (docs/accuracy.md). auto: when that "
        "graph is beside the weights and the encoder runs on the CPU; on: the same, but a "
        "missing or mismatched graph stops start-up; off: float32. Its card's thresholds "
        "and sha256 are then the service's (gallery vectors are tagged with it)."))
    fp16_tolerance: float = Field(1e-3, gt=0, description=(
        "Largest Euclidean distance between fp16 and fp32 embeddings accepted by the "
        "precision=auto check."))
    orient: bool = Field(True, description=(
        "Find faces in sideways and upside-down photos that carry no EXIF orientation tag: "
        "when an image's best face scores under 0.9 (0.7 % of upright LFW photos) or none is "
        "found, it is looked at turned 180, 90 and 270 degrees and the best turn is used; the "
        "face's `rotation` says which (docs/accuracy.md). false: every photo as decoded."))
    face_choice: Literal["largest", "central"] = Field("largest", description=(
        "Which face of a photo with several is compared: largest, or central (of the faces "
        "at least half as large as the largest, the one nearest the image centre; for "
        "face-centred photos). `faces_found` in the reply says how many there were."))
    threshold: float | None = Field(None, gt=0, le=2, description=(
        "Verification threshold override (Euclidean distance); unset = the model card's "
        "calibrated `threshold.value`. A request's own `threshold` wins over both, up to "
        "`max_client_threshold`."))
    max_client_threshold: float | None = Field(None, gt=0, le=2, description=(
        "The loosest `threshold` a request may ask for; a larger one gets 422 with the limit "
        "in the message. Unset = the model card's FAR 1 % threshold (`threshold.at_far_1e-2`),"
        " or the verdict threshold when the card has none; never below the verdict "
        "threshold."))

    # --- dynamic batcher ---------------------------------------------------------------
    max_batch_size: int = Field(32, ge=2, le=4096, description=(
        "Most faces in one encoder forward pass (>= 2, so a /verify pair fits in one)."))
    max_batch_delay_ms: float = Field(5.0, ge=0, le=1000, description=(
        "Longest wait, after the first face of a batch was queued, for more faces (none when "
        "no request is still being decoded or detected: nothing else could join)."))
    max_queue: int = Field(256, ge=2, description=(
        "Most faces waiting for the encoder; beyond it requests get 503 overloaded."))
    max_concurrent_requests: int = Field(128, ge=1, description=(
        "Most /verify and /embed requests being decoded, detected or encoded at once; a slot "
        "is taken once the request's body is in, and beyond the limit requests get 503 "
        "overloaded. Upload bytes are bounded by `max_body_bytes_in_flight`."))
    active_requests: int = Field(0, ge=0, description=(
        "Requests worked on (decoded, detected, encoded) at once; the others wait for a slot,"
        " in arrival order while at most 16 wait, the newest first beyond (overload), up to "
        "`max_detect_wait_ms`, then get 503 overloaded. 0 = `detect_workers` (2) when the "
        "detect workers also encode (`encode_in_detect_workers`), else `detect_workers` + 1 "
        "(3, the third in the encoder): enough to keep two cores busy, few enough that an "
        "answered request does not share them with a crowd (docs/benchmarks.md)."))
    retry_after_s: int = Field(1, ge=1, description="Retry-After (seconds) sent with 503.")

    # --- input limits ------------------------------------------------------------------
    max_upload_bytes: int = Field(10 * 1024 * 1024, ge=1024, description=(
        "Largest image file accepted, per image (decoded size for base64 JSON). The request "
        "body is counted while it is read, so a larger upload is refused without buffering it."))
    body_timeout_s: float = Field(120.0, gt=0, description=(
        "Longest time a request body may take to arrive; a slower one gets 408 "
        "request_timeout and its connection is closed."))
    min_body_rate: float = Field(10_240.0, ge=0, description=(
        "Slowest average rate (bytes/s) a request body may arrive at, once "
        "`body_rate_grace_s` has passed (0 = no rate check); a slower one gets 408 "
        "request_timeout. Stops trickling uploads from holding connections and memory."))
    body_rate_grace_s: float = Field(5.0, gt=0, description=(
        "Seconds before `min_body_rate` is checked (connection set-up, the first bytes)."))
    max_body_bytes_in_flight: int = Field(256 * 1024 * 1024, ge=1024, description=(
        "Most request-body bytes held at once across all requests, from a body's first byte "
        "until its answer; beyond it a request gets 503 overloaded. The memory bound of "
        "uploads (docs/operations.md); at least one largest /verify body."))
    max_pixels: int = Field(40_000_000, ge=1, le=PILLOW_MAX_PIXELS, description=(
        "Largest width x height accepted, checked from the image header before decoding "
        "(decompression-bomb guard). At most Pillow's own limit (178956970), which stays on "
        "behind it."))

    # --- workers -----------------------------------------------------------------------
    detect_workers: int = Field(2, ge=1, le=64, description=(
        "Workers (processes or threads, `detect_pool`) that decode images and detect and "
        "align faces off the event loop."))
    detect_pool: Literal["auto", "process", "thread"] = Field("auto", description=(
        "What the detect workers are. process: worker processes, each with its own copy of "
        "the face pipeline (~60 MB each with YuNet), free of the server's GIL: 290 against 188 LFW "
        "photos/s on two cores. thread: threads of the server process (the only choice for "
        "MTCNN on a GPU). auto: processes when detection runs on the CPU, else threads."))
    encode_in_detect_workers: bool = Field(True, description=(
        "When the detect workers are processes and the encoder runs in ONNX Runtime on the "
        "CPU (int8 or float32), each worker also embeds the face it aligned, on one thread: "
        "the crop never crosses into the server process, which is left the HTTP work. "
        "Requests with detect=false still go through the batcher. On the CPU a batch saves "
        "~5 % per face (int8: 2.04 ms at batch 1, 1.94 at 8), less than moving the crop "
        "costs (docs/benchmarks.md)."))
    max_detect_wait_ms: float = Field(250.0, ge=0, description=(
        "Queue-time budget: the longest a request waits for one of the `active_requests` "
        "slots, and then for a detect worker; past it, 503 overloaded with Retry-After, "
        "unworked, so the accepted requests' latency stays bounded under overload. 0 = no "
        "budget (requests queue up to `max_concurrent_requests`)."))
    decode_min_side: int = Field(1280, ge=0, description=(
        "JPEGs at least twice this on their longer side are decoded at 1/2, 1/4 or 1/8 size "
        "(libjpeg's DCT scaling), keeping the longer side >= this: a 12 MP photo decodes at "
        "2016x1512 in ~2/3 of the time, and later steps handle a quarter of the pixels. "
        "Detection sees at most 640 px (YuNet) anyway; alignment samples the decoded image; "
        "boxes and landmarks are reported in the upload's pixels. 0 = always decode whole."))
    torch_threads: int = Field(0, ge=0, description=(
        "The encoder's threads: ONNX Runtime's for the int8 graph, torch's intra-op threads "
        "when the torch module runs (0 = the cores the process may use)."))
    warmup: bool = Field(True, description="Run detection and encoder passes before reporting "
                                           "ready.")

    # --- 1:N galleries -----------------------------------------------------------------
    gallery_enabled: bool = Field(True, description=(
        "Serve the /galleries routes (enroll, identify, subject verify, list, delete). false ="
        " the routes do not exist (404) and no store is opened."))
    gallery_url: str = Field("sqlite:///data/gallery.db", description=(
        "Where enrolled faces are kept. sqlite:///relative/path or sqlite:////absolute/path: "
        "an embedded file (WAL, synchronous writes), for one server. postgresql://user:pass@"
        "host:port/db: shared by several replicas, which stay in sync through LISTEN/NOTIFY. "
        "Search is always in memory, in each replica."))
    gallery_store_crops: bool = Field(False, description=(
        "Also store each enrolled face's aligned crop (a 150x150 PNG, ~40 KB): it lets "
        "`python -m app.gallery reembed` move a gallery to new weights without the original "
        "photos, but it keeps a face image of every enrolled person; off = only the vectors."))
    gallery_threshold: float | None = Field(None, gt=0, le=2, description=(
        "Fixes identify's `match` threshold whatever the gallery's size; unset = the "
        "threshold that holds `gallery_fpir` at the gallery's current size (the model card's "
        "impostor table at FAR = gallery_fpir / faces). A request's `threshold` wins, up to "
        "the identify cap (`gallery_max_client_fpir`)."))
    gallery_fpir: float = Field(0.01, gt=0, lt=1, description=(
        "The false-positive identification rate identify's default threshold holds: the "
        "share of searches by people who are not enrolled that match somebody. The "
        "threshold is the impostor table's distance at FAR = gallery_fpir / N (N: the "
        "gallery's enrolled faces), so it tightens as the gallery grows; the reply says "
        "which threshold, FPIR target and gallery size it used (docs/accuracy.md)."))
    gallery_max_client_fpir: float = Field(0.1, gt=0, lt=1, description=(
        "The loosest threshold an identify request may ask for: the impostor table's "
        "distance at FAR = this / N (422 above it). Without an impostor table in the card, "
        "`max_client_threshold`."))
    gallery_sync_interval_s: float = Field(5.0, gt=0, description=(
        "Every replica re-reads the store's change log at least this often, besides "
        "PostgreSQL's notifications (which a dropped connection can lose)."))
    gallery_max_staleness_s: float | None = Field(None, gt=0, description=(
        "identify and subject verify answer 503 store_stale (with Retry-After) when this "
        "replica last read its store's change log longer ago than this: answering from "
        "memory could find people deleted meanwhile. Unset = 3 x gallery_sync_interval_s."))
    gallery_allow_anonymous: bool = Field(False, description=(
        "Serve the gallery routes without API keys when none are configured (a local trial; "
        "`make serve` sets it and the server logs a warning). false: with no keys, every "
        "gallery route answers 401 with how to configure keys."))

    # --- security and logs -------------------------------------------------------------
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list, description=(
        "Comma-separated API keys, each allowed every operation on every gallery; with "
        "neither these nor api_keys_file, /verify and /embed are open and the galleries "
        "answer 401. Clients send `X-API-Key: <key>` or `Authorization: Bearer <key>`. "
        "Health, metrics, docs and the demo page stay open. Held as secrets: a repr or log "
        "of the settings shows `**********`."))
    api_keys_file: Path | None = Field(None, description=(
        "A JSON file of scoped keys: a list of {name, key_sha256, galleries, operations} "
        "(docs/api.md, \"Keys and scopes\"); it holds only the keys' sha256. Re-read when it "
        "changes. `python -m app.keys new NAME --galleries G --operations OPS` makes an entry. "
        "Works beside api_keys."))
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description=(
        "Log level of the JSON logs."))

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, v):
        if v is None:
            return []
        items = v.split(",") if isinstance(v, str) else v
        keys = (k.get_secret_value() if isinstance(k, SecretStr) else str(k) for k in items)
        return [k.strip() for k in keys if k.strip()]

    @field_validator("api_keys_file", "gallery_threshold", "gallery_max_staleness_s",
                     mode="before")
    @classmethod
    def _empty_is_unset(cls, v):
        """`FACEVERIFY_API_KEYS_FILE=` (compose's way of passing nothing) means unset."""
        return None if isinstance(v, str) and not v.strip() else v

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, v):
        return v.lower() if isinstance(v, str) else v

    @field_validator("device", "detect_device")
    @classmethod
    def _check_device(cls, v):
        if v is None:
            return v
        v = v.strip().lower()
        if not _DEVICE.match(v):
            raise ValueError("must be auto, cpu, cuda or cuda:N")
        return v

    @model_validator(mode="after")
    def _queue_holds_a_pair(self):
        if self.max_queue < 2:
            raise ValueError("max_queue must hold at least one /verify pair (2 faces)")
        return self

    @model_validator(mode="after")
    def _staleness_outlasts_a_sync_interval(self):
        if self.gallery_max_staleness_s is not None and \
                self.gallery_max_staleness_s <= self.gallery_sync_interval_s:
            raise ValueError("gallery_max_staleness_s must be longer than "
                             "gallery_sync_interval_s: a healthy replica reads its store only "
                             "once an interval when nothing notifies it")
        return self

    @model_validator(mode="after")
    def _bytes_in_flight_hold_a_request(self):
        from app.intake import body_limit
        largest = body_limit("application/json", 2, self.max_upload_bytes)
        if self.max_body_bytes_in_flight < largest:
            raise ValueError(f"max_body_bytes_in_flight ({self.max_body_bytes_in_flight}) must "
                             f"hold at least one largest /verify body ({largest} bytes: two "
                             "max_upload_bytes images as base64 JSON)")
        return self

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_keys) or self.api_keys_file is not None


def settings_table() -> list[tuple[str, str, str]]:
    """(environment variable, default, description) for every setting, for the docs."""
    rows = []
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        if isinstance(default, list):
            default = ",".join(default)
        elif isinstance(default, bool):
            default = str(default).lower()
        elif isinstance(default, Path) and default.is_relative_to(WEIGHTS_DIR):
            default = f"<weights>/{default.relative_to(WEIGHTS_DIR)}"  # checkout or package
        rows.append((ENV_PREFIX + name.upper(), "" if default is None else str(default),
                     field.description or ""))
    return rows

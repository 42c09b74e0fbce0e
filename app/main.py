"""The FastAPI app: `create_app(settings)`, and `app` for `uvicorn app.main:app`.

`app` is built at import with settings from the environment (FACEVERIFY_*); nothing heavy
happens before the lifespan starts: weights are loaded, the batcher started and the model
warmed up there (see app/service.py for the order and what "ready" means).
"""
from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app import __version__
from app.config import Settings
from app.errors import install_error_handlers
from app.keys import Keyring, KeysFileError
from app.metrics import Metrics
from app.observability import RequestMiddleware, configure_logging
from app.routes import router
from app.schemas import install_openapi
from app.service import Service, StartupError

log = logging.getLogger("faceverify.main")

DESCRIPTION = """Face verification with a Siamese encoder.

`POST /verify` compares the largest face of two images; `POST /embed` returns one face's unit
embedding. `/galleries/…` enrolls faces under subjects and identifies a face against them (1:N). Images come as multipart files or base64 strings in JSON. Errors are
`{"error": {"code", "message", "field"}}`. When API keys are configured, send
`X-API-Key: <key>` or `Authorization: Bearer <key>` (health, metrics and docs stay open); a key
is scoped to galleries and operations (403 `forbidden` outside its scope), and the gallery
routes need a key unless the operator allowed anonymous galleries.
"""


def load_keys(settings: Settings) -> Keyring:
    """The keyring (app/keys.py); a bad keys file stops start-up."""
    try:
        keys = Keyring([k.get_secret_value() for k in settings.api_keys], settings.api_keys_file)
    except KeysFileError as exc:
        log.error("start-up failed: %s", exc, extra={"event": "startup_failed"})
        raise SystemExit(f"faceverify: API keys file: {exc}") from None
    log.info("API keys", extra={"keys": [k.name for k in keys.keys],
                                "keys_file": str(settings.api_keys_file or "")})
    if settings.gallery_enabled and not keys:
        if settings.gallery_allow_anonymous:
            log.warning("galleries are served WITHOUT API keys "
                        "(FACEVERIFY_GALLERY_ALLOW_ANONYMOUS=true): anyone who reaches this "
                        "port can enroll, list, identify and delete; for local use only")
        else:
            log.warning("no API keys configured: the gallery routes answer 401 until "
                        "FACEVERIFY_API_KEYS_FILE or FACEVERIFY_API_KEYS is set")
    return keys


@asynccontextmanager
async def lifespan(app: FastAPI):
    svc: Service = app.state.service
    app.state.keys = load_keys(app.state.settings)
    try:
        await asyncio.to_thread(svc.load)
    except StartupError as exc:
        log.error("start-up failed: %s", exc, extra={"event": "startup_failed"})
        raise SystemExit(f"faceverify: {exc}") from None
    svc.start()
    warm = asyncio.create_task(svc.warm_up_then_ready(), name="warm-up")
    app.state.warmup_task = warm
    try:
        yield
    finally:
        if not warm.done():
            warm.cancel()
        await asyncio.gather(warm, return_exceptions=True)
        log.info("shutting down: draining the encoder queue",
                 extra={"queued_faces": svc.batcher.depth if svc.batcher else 0})
        await svc.stop()
        log.info("stopped")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    configure_logging(settings.log_level)
    metrics = Metrics(settings.max_batch_size)
    app = FastAPI(title="faceverify", version=__version__, description=DESCRIPTION,
                  lifespan=lifespan)
    app.state.settings = settings
    app.state.keys = None  # loaded at start-up (lifespan)
    app.state.service = Service(settings, metrics)
    install_error_handlers(app)
    app.include_router(router)
    if settings.gallery_enabled:
        from app.gallery.routes import router as gallery_router
        app.include_router(gallery_router)
    app.add_middleware(RequestMiddleware, metrics=metrics)
    install_openapi(app)  # the schema declares the keys and threshold caps this server enforces
    return app


app = create_app()

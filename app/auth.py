"""Optional API keys: `X-API-Key: <key>` or `Authorization: Bearer <key>`.

Off when no keys are configured. Keys are compared with `hmac.compare_digest` against every
configured key (no early exit), and never logged. Health, metrics, docs and the demo page are
open; /verify, /embed and /model need a key when keys are configured.
"""
from __future__ import annotations

import hmac

from fastapi import Request
from pydantic import SecretStr

from app.errors import ServiceError


def presented_key(request: Request) -> str | None:
    key = request.headers.get("x-api-key")
    if key:
        return key.strip()
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def key_matches(presented: str, keys: list[SecretStr]) -> bool:
    given = presented.encode("utf-8", "surrogateescape")
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(given,
                                  key.get_secret_value().encode("utf-8", "surrogateescape"))
    return ok


async def require_api_key(request: Request) -> None:
    """FastAPI dependency for the protected routes."""
    keys = request.app.state.settings.api_keys
    if not keys:
        return
    key = presented_key(request)
    if key is None or not key_matches(key, keys):
        raise ServiceError(
            "unauthorized",
            "missing API key" if key is None else "invalid API key",
            field="X-API-Key",
            headers={"WWW-Authenticate": 'Bearer realm="faceverify"'})

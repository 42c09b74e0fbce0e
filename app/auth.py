"""Who is asking, and may they: `X-API-Key: <key>` or `Authorization: Bearer <key>`, checked
against the keyring (app/keys.py) by a per-route dependency, before any of the body is read.

- No keys configured: /verify, /embed and /model are open (as before scopes existed); the
  gallery routes answer 401 with how to configure keys, unless the operator set
  FACEVERIFY_GALLERY_ALLOW_ANONYMOUS=true (galleries hold biometric data).
- Keys configured: a missing or unknown key is 401; a known key whose scope does not cover
  the route's operation or gallery is 403 `forbidden`.
- The key's name goes into the request's state, so that the access log shows which key made
  a request, never the key. Health, metrics, docs and the demo page are always open.
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from app.errors import ServiceError
from app.keys import Keyring

# The two ways to send a key, as the OpenAPI schema declares them (securitySchemes); they never
# refuse a request themselves (auto_error=False): `authorize` does, with the service's errors.
# A route whose keys are not required (none configured; anonymous galleries) has no
# `security` in the schema a server serves (app/schemas.py, declare_server_limits).
API_KEY_HEADER = APIKeyHeader(
    name="X-API-Key", scheme_name="ApiKey", auto_error=False,
    description="an API key (docs/api.md, \"Keys and scopes\"): a missing or unknown one is "
                "401 unauthorized, one whose scope does not cover the route's operation or "
                "gallery is 403 forbidden")
BEARER = HTTPBearer(scheme_name="Bearer", auto_error=False,
                    description="the same key, as `Authorization: Bearer <key>`")

UNAUTHORIZED_HEADERS = {"WWW-Authenticate": 'Bearer realm="faceverify"'}
NO_KEYS_FOR_GALLERIES = (
    "galleries hold biometric data and this server has no API keys: set "
    "FACEVERIFY_API_KEYS_FILE (scoped keys: docs/api.md, \"Keys and scopes\") or "
    "FACEVERIFY_API_KEYS; FACEVERIFY_GALLERY_ALLOW_ANONYMOUS=true serves galleries to anyone "
    "(a local trial only)")


def presented_key(request: Request) -> str | None:
    key = request.headers.get("x-api-key")
    if key:
        return key.strip()
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def _unauthorized(message: str) -> ServiceError:
    return ServiceError("unauthorized", message, field="X-API-Key",
                        headers=UNAUTHORIZED_HEADERS)


def authorize(request: Request, operation: str | None, gallery_route: bool) -> None:
    """Raise 401/403 unless the request may do `operation` (None: any valid key) on the
    route's gallery (its `gallery` path parameter)."""
    keyring: Keyring = request.app.state.keys
    if not keyring:
        if gallery_route and not request.app.state.settings.gallery_allow_anonymous:
            raise _unauthorized(NO_KEYS_FOR_GALLERIES)
        return
    presented = presented_key(request)
    if presented is None:
        raise _unauthorized("missing API key")
    key = keyring.find(presented)
    if key is None:
        raise _unauthorized("invalid API key")
    request.state.key_name = key.name
    if operation is None:
        return
    gallery = request.path_params.get("gallery")
    if not key.allows(operation, gallery):
        where = f"in gallery {gallery!r}" if gallery is not None else "here"
        raise ServiceError("forbidden", f"key {key.name!r} may not {operation} {where}",
                           field="X-API-Key")


def require(operation: str | None, gallery_route: bool = False
            ) -> Callable[[Request], Awaitable[None]]:
    """The FastAPI dependency for a protected route: `Depends(require("identify", True))`."""
    async def dependency(
            request: Request, _key: Annotated[str | None, Security(API_KEY_HEADER)] = None,
            _bearer: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)] = None
    ) -> None:
        authorize(request, operation, gallery_route)
    dependency.__name__ = f"require_{operation or 'key'}"
    return dependency

"""faceverify as a library: the face verifier in-process, its command line, and a client for
the HTTP service.

    from faceverify import Verifier          # in-process (no server), torch-free on the CPU
    from faceverify import Client, AsyncClient  # a running faceverify service over HTTP

Names are imported on first use, so `import faceverify` stays cheap (the CLI's start-up).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

__all__ = ["AsyncClient", "Client", "FaceverifyError", "Verifier"]

_WHERE = {"Verifier": "faceverify.api", "Client": "faceverify.client",
          "AsyncClient": "faceverify.client", "FaceverifyError": "faceverify.client"}

if TYPE_CHECKING:
    from faceverify.api import Verifier
    from faceverify.client import AsyncClient, Client, FaceverifyError


def __getattr__(name: str):
    if name in _WHERE:
        import importlib
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'faceverify' has no attribute {name!r}")

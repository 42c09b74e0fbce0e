"""identify's threshold: one that holds a target false-positive identification rate (FPIR) at
the gallery's current size, from the impostor table in the model card.

A stranger searched against N enrolled faces has N chances to be accepted: FPIR ≈ N·FAR. The
default threshold is therefore the table's distance at FAR = FPIR / N
(`model.evaluate.open_set.threshold_for_fpir`, the rule `python -m model.evaluate --protocol identify`
measures), and it tightens as the gallery grows. N counts enrolled faces, not subjects: a
stranger is compared with every face (docs/accuracy.md, "1:N on LFW", measures both).

Order: a request's `threshold` (up to a cap: the table's distance at FAR = max_client_fpir /
N, 10 % by default, or /verify's cap where there is no table), else
`FACEVERIFY_GALLERY_THRESHOLD`, else the FPIR rule; a card without an impostor table falls
back to its FAR 0.1 % threshold (the previous default). Subject verify is one comparison and
keeps /verify's threshold.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

from app.errors import ServiceError
from model.evaluate.open_set import threshold_for_fpir

log = logging.getLogger("faceverify.gallery")
FLOOR_LOG_INTERVAL_S = 60.0


@dataclass(frozen=True)
class IdentifyThreshold:
    """The threshold an identify used, and why (all of it goes into the reply)."""

    value: float
    source: str  # request | setting | fpir | card
    gallery_faces: int
    fpir_target: float | None = None
    note: str | None = None


def _down4(x: float) -> float:
    """Rounded down to 4 decimals: a limit quoted in a message is itself allowed."""
    return math.floor(x * 1e4) / 1e4


class IdentifyThresholds:
    def __init__(self, table: list[dict] | None, fpir: float, max_client_fpir: float,
                 fixed: float | None, fallback: float, fallback_cap: float):
        self.table = table or None
        self.fpir = fpir
        self.max_client_fpir = max(fpir, max_client_fpir)
        self.fixed = fixed
        self.fallback = fallback  # no table: the card's FAR 0.1 % threshold
        self.fallback_cap = fallback_cap  # no table: /verify's client cap
        self._floor_logged = 0.0

    @classmethod
    def from_card(cls, card: dict, settings, verify_threshold: float,
                  verify_cap: float) -> IdentifyThresholds:
        th = card.get("threshold") or {}
        return cls(table=(card.get("impostors") or {}).get("table"),
                   fpir=settings.gallery_fpir, max_client_fpir=settings.gallery_max_client_fpir,
                   fixed=settings.gallery_threshold,
                   fallback=float(th.get("at_far_1e-3") or verify_threshold),
                   fallback_cap=verify_cap)

    @property
    def rule(self) -> str:
        if self.fixed is not None:
            return f"fixed at {self.fixed:g} (FACEVERIFY_GALLERY_THRESHOLD)"
        if self.table is None:
            return f"fixed at {self.fallback:g} (the card's FAR 0.1 %; it has no impostor table)"
        return (f"FPIR {self.fpir:g} at the gallery's size (the card's impostor table, "
                f"FAR {self.table[-1]['far']:g} to {self.table[0]['far']:g})")

    def default(self, faces: int) -> IdentifyThreshold:
        if self.fixed is not None:
            return IdentifyThreshold(self.fixed, "setting", faces)
        if self.table is None:
            return IdentifyThreshold(self.fallback, "card", faces)
        t = threshold_for_fpir(self.table, self.fpir, faces)
        note = None
        if t.floored:
            note = (f"a gallery of {faces} faces needs a per-comparison FAR of "
                    f"{self.fpir / max(1, faces):.2g} to hold FPIR {self.fpir:g}, below the "
                    f"impostor table's smallest ({t.far:g}): its threshold is used, so strangers "
                    "may match more often than the target")
            now = time.monotonic()
            if now - self._floor_logged > FLOOR_LOG_INTERVAL_S:
                self._floor_logged = now
                log.warning("identify: %s", note, extra={"gallery_faces": faces})
        return IdentifyThreshold(t.distance, "fpir", faces, self.fpir, note)

    def cap(self, faces: int) -> float:
        """The loosest threshold a request may ask for in a gallery of this size."""
        if self.table is None:
            cap = self.fallback_cap
        else:
            cap = threshold_for_fpir(self.table, self.max_client_fpir, faces).distance
        return _down4(max(cap, self.default(faces).value))

    def resolve(self, requested: float | None, faces: int) -> IdentifyThreshold:
        """The request's threshold (422 above the cap), else the default."""
        if requested is None:
            return self.default(faces)
        cap = self.cap(faces)
        if requested > cap:
            why = (f"FPIR {self.max_client_fpir:g} at {faces} faces" if self.table is not None
                   else "FACEVERIFY_MAX_CLIENT_THRESHOLD")
            raise ServiceError("validation_error", f"threshold: {requested:g} is looser than "
                               f"this server allows for identify here (at most {cap:g}: "
                               f"{why})", "threshold")
        return IdentifyThreshold(requested, "request", faces)

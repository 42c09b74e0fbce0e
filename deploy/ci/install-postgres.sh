#!/usr/bin/env bash
# Installs Debian's PostgreSQL server binaries for the gallery tests that run against a real
# PostgreSQL (tests/test_gallery_store.py, tests/test_gallery_replicas.py: each starts a
# throwaway cluster of its own with bench/postgres.py, never a system service), only when they
# are missing. CI (.ci/run) calls it before `make test`; on a developer machine run it once as
# root (or with sudo). Without the binaries those tests skip.
set -euo pipefail

if compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
    echo "install-postgres: $(ls -d /usr/lib/postgresql/*/bin/initdb | tail -1) already installed"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-postgres: no apt-get here; install PostgreSQL yourself" \
         "(the PostgreSQL gallery tests skip without it)" >&2
    exit 0
fi
SUDO=""
if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        echo "install-postgres: not root and no sudo; the PostgreSQL gallery tests will skip" >&2
        exit 0
    fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# the server binaries only; the package's own cluster is not used (and not started here)
$SUDO apt-get install -y -qq --no-install-recommends postgresql
echo "install-postgres: installed $(ls -d /usr/lib/postgresql/*/bin/initdb | tail -1)"

#!/usr/bin/env bash
# Installs Debian's Chromium and ChromeDriver for the browser test (tests/test_demo_page.py),
# only when they are missing, so running it again costs nothing. CI (.ci/run) calls it before
# `make test`; on a developer machine run it once as root (or with sudo).
# The test drives /usr/bin/chromium through /usr/bin/chromedriver (Selenium); no test tool
# downloads a browser of its own.
set -euo pipefail

if [[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]]; then
    echo "install-browser: $(/usr/bin/chromium --version 2>/dev/null || echo chromium) already installed"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-browser: no apt-get here; install chromium and chromedriver yourself" \
         "(the browser test skips without them)" >&2
    exit 0
fi
SUDO=""
if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        echo "install-browser: not root and no sudo; the browser test will skip" >&2
        exit 0
    fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver
echo "install-browser: installed $(/usr/bin/chromium --version 2>/dev/null)," \
     "$(/usr/bin/chromedriver --version 2>/dev/null | head -1)"

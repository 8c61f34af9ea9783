#!/usr/bin/env bash
# Headless Chromium and its driver for the browser test (tests/e2e/test_catalog_browser.py):
# Debian's own packages, never a downloaded browser. Idempotent; needs root (or sudo) for apt.
set -euo pipefail
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
/usr/bin/chromium --version

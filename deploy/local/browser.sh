#!/usr/bin/env bash
# Make sure Debian's Chromium is installed for the dashboard's browser test.
# Idempotent: does nothing when /usr/bin/chromium (or $LEADSTAGE_CHROMIUM) exists.
set -euo pipefail
chromium="${LEADSTAGE_CHROMIUM:-/usr/bin/chromium}"
if [ -x "$chromium" ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "Chromium is needed at $chromium for the dashboard test (set LEADSTAGE_CHROMIUM)." >&2
  exit 1
fi
sudo=""
if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
echo "Installing Debian's chromium for the dashboard test..."
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium >/dev/null

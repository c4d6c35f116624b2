#!/usr/bin/env bash
# System packages the tests use beyond Python: chromium renders report.html headless
# (tests/test_failures_report.py). Idempotent: does nothing when chromium is already there.
# Best effort: without root or apt-get the report's browser test skips and says why.
set -uo pipefail
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "ci_deps: chromium missing and cannot apt-get it (not root or no apt-get)" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq && apt-get install -y -qq chromium >/dev/null ||
  echo "ci_deps: apt-get install chromium failed; the report's browser test will skip" >&2
exit 0

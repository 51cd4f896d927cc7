#!/bin/sh
# Debian's Chromium for the browser test (tests/test_mlflow_ui.py); Playwright drives it, no browser
# download. Never fails: without chromium (no apt-get, no root) that test is skipped with its reason.
command -v chromium >/dev/null 2>&1 && exit 0
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo -n"
if command -v apt-get >/dev/null 2>&1 && { $SUDO apt-get install -y -q chromium >/dev/null 2>&1 ||
     { $SUDO apt-get update -q >/dev/null 2>&1 && $SUDO apt-get install -y -q chromium >/dev/null 2>&1; }; }; then
    echo "installed $(chromium --version 2>/dev/null)"
else
    echo "chromium not installed (needs apt-get and root): the MLflow UI browser test will be skipped"
fi
exit 0

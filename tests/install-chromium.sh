#!/bin/sh
# Debian's Chromium for the browser test (tests/test_mlflow_ui.py); Playwright drives it, no browser
# download. Never fails: without chromium (no apt-get, no root) that test is skipped with its reason.
command -v chromium >/dev/null 2>&1 && exit 0
. "$(dirname "$0")/apt-install.sh"
if apt_install chromium; then
    echo "installed $(chromium --version 2>/dev/null)"
else
    echo "chromium not installed (needs apt-get and root): the MLflow UI browser test will be skipped"
fi
exit 0

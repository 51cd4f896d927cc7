#!/bin/sh
# PostgreSQL for the tests that run a real database (tests/test_postgres.py, test_resume.py): they start
# a throwaway cluster with initdb and pg_ctl. Installed with apt-get only where initdb is absent. Never
# fails: without PostgreSQL (no apt-get, no root) those tests are skipped with their reason.
command -v initdb >/dev/null 2>&1 && exit 0
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && exit 0
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo -n"
if command -v apt-get >/dev/null 2>&1 && { $SUDO apt-get install -y -q postgresql >/dev/null 2>&1 ||
     { $SUDO apt-get update -q >/dev/null 2>&1 && $SUDO apt-get install -y -q postgresql >/dev/null 2>&1; }; }; then
    echo "installed $(ls /usr/lib/postgresql/*/bin/initdb)"
else
    echo "postgresql not installed (needs apt-get and root): the PostgreSQL tests will be skipped"
fi
exit 0

#!/bin/sh
# PostgreSQL for the tests that run a real database (tests/test_postgres.py, test_resume.py): they start
# a throwaway cluster with initdb and pg_ctl. Installed with apt-get only where initdb is absent. Never
# fails: without PostgreSQL (no apt-get, no root) those tests are skipped with their reason.
command -v initdb >/dev/null 2>&1 && exit 0
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && exit 0
. "$(dirname "$0")/apt-install.sh"
if apt_install postgresql; then
    echo "installed $(ls /usr/lib/postgresql/*/bin/initdb)"
else
    echo "postgresql not installed (needs apt-get and root): the PostgreSQL tests will be skipped"
fi
exit 0

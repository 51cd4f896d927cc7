#!/bin/bash
# The figures of README "A load test of the tracking path" (run as root: the throwaway PostgreSQL runs as
# the postgres user). Part 1: N = 8, 32, 64 writers against each store. Part 2: N = 64, the two stores
# alternating, 3 rounds. M: a scratch folder; W: a checkout of this repository; PY: its venv's python.
set -u
M=${M:-/tmp/measure-tracking}; W=${W:-$(cd "$(dirname "$0")/.." && pwd)}; PY=${PY:-$W/.venv/bin/python}
mkdir -p $M; cd $W

start_postgres() {  # DIR PORT: a durable cluster (fsync on, max_connections 100) with user and database "bench"
    rm -rf $1; mkdir -p $1; chown postgres $1
    runuser -u postgres -- initdb -D $1/data -A trust -U postgres >/dev/null
    runuser -u postgres -- pg_ctl -D $1/data -o "-p $2 -k $1 -c listen_addresses=127.0.0.1" -l $1/log -w start >/dev/null
    psql -q -h 127.0.0.1 -p $2 -U postgres -c "create user bench password 'bench-pw'" -c "create database mlflow owner bench"
}

measure() {  # TAG URI N PORT CSV: start the server on URI, run the load test, stop the server
    local S=$M/state-${1%%-r*}  # one admin password per store, across rounds
    env -u MLFLOW_TRACKING_URI $PY run_search.py server --backend-store-uri $2 --artifacts-destination $M/art-$1 \
        --state-dir $S --port $4 --concurrent-trials $3 > $M/server-$1-$3.log 2>&1 &
    local SP=$!
    for i in $(seq 120); do curl -sf http://127.0.0.1:$4/health >/dev/null && break; sleep 1; done
    MLFLOW_TRACKING_USERNAME=admin MLFLOW_TRACKING_PASSWORD=$(cat $S/admin-password) \
        timeout 1500 $PY run_search.py benchmark-tracking --tracking-uri http://127.0.0.1:$4 --writers $3 --epochs 10 \
        --out $5 > $M/bench-$1-$3.log 2>&1
    echo "$1 N=$3 rc=$?"; tail -1 $M/bench-$1-$3.log
    pkill -TERM -P $SP; kill $SP; wait $SP 2>/dev/null; sleep 3
}

start_postgres $M/pg 55500
PGURI=postgresql://bench:bench-pw@127.0.0.1:55500/mlflow
rm -rf $M/sqlite; mkdir -p $M/sqlite
for N in 8 32 64; do measure postgres $PGURI $N 5091 $M/results-postgres.csv; done
for N in 8 32 64; do measure sqlite sqlite:///$M/sqlite/mlflow.db $N 5091 $M/results-sqlite.csv; done
runuser -u postgres -- pg_ctl -D $M/pg/data -m fast -w stop >/dev/null

start_postgres $M/pg2 55501
rm -rf $M/sqlite2; mkdir -p $M/sqlite2
for round in 1 2 3; do
    measure postgres-r$round postgresql://bench:bench-pw@127.0.0.1:55501/mlflow 64 5092 $M/repeat-postgres.csv
    measure sqlite-r$round sqlite:///$M/sqlite2/mlflow.db 64 5092 $M/repeat-sqlite.csv
done
runuser -u postgres -- pg_ctl -D $M/pg2/data -m fast -w stop >/dev/null
grep -c 'HTTP/1.1" 503' $M/server-*.log

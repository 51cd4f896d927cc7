#!/bin/bash
# The figures of README "A load test of the tracking path" (as root: the throwaway PostgreSQL runs as the postgres user).
# Part 1: N = 8, 32, 64 against each store. Part 2: N = 64, the two stores alternating, 3 rounds.
# M: a scratch folder; W: a checkout of this repository; PY: its venv python.
set -u
M=${M:-/tmp/measure-tracking}; W=${W:-$(cd "$(dirname "$0")/.." && pwd)}; PY=${PY:-$W/.venv/bin/python}; mkdir -p $M
cd $W
PG=$M/pg; rm -rf $PG; mkdir -p $PG; chown postgres $PG
runuser -u postgres -- initdb -D $PG/data -A trust -U postgres >/dev/null
# a durable cluster (fsync on), PostgreSQL's default max_connections (100)
runuser -u postgres -- pg_ctl -D $PG/data -o "-p 55500 -k $PG -c listen_addresses=127.0.0.1" -l $PG/log -w start >/dev/null
psql -q -h 127.0.0.1 -p 55500 -U postgres -c "create user bench password 'bench-pw'" -c "create database mlflow owner bench"
EPOCHS=${EPOCHS:-10}
for backend in postgres sqlite; do
  if [ $backend = postgres ]; then URI=postgresql://bench:bench-pw@127.0.0.1:55500/mlflow; else rm -rf $M/sqlite; mkdir -p $M/sqlite; URI=sqlite:///$M/sqlite/mlflow.db; fi
  for N in 8 32 64; do
    S=$M/state-$backend; rm -rf $M/art-$backend
    env -u MLFLOW_TRACKING_URI $PY run_search.py server --backend-store-uri $URI --artifacts-destination $M/art-$backend \
       --state-dir $S --port 5091 --concurrent-trials $N > $M/server-$backend-$N.log 2>&1 &
    SP=$!
    for i in $(seq 120); do curl -sf http://127.0.0.1:5091/health >/dev/null && break; sleep 1; done
    MLFLOW_TRACKING_USERNAME=admin MLFLOW_TRACKING_PASSWORD=$(cat $S/admin-password) \
      timeout 1500 $PY run_search.py benchmark-tracking --tracking-uri http://127.0.0.1:5091 --writers $N --epochs $EPOCHS \
      --out $M/results-$backend.csv > $M/bench-$backend-$N.log 2>&1
    echo "$backend N=$N rc=$?"; cat $M/bench-$backend-$N.log | tail -4
    pkill -TERM -P $SP; kill $SP; wait $SP 2>/dev/null; sleep 3
  done
done
runuser -u postgres -- pg_ctl -D $PG/data -m fast -w stop >/dev/null
echo done
# ---- part 2
set -u
M=${M:-/tmp/measure-tracking}; W=${W:-$(cd "$(dirname "$0")/.." && pwd)}; PY=${PY:-$W/.venv/bin/python}; mkdir -p $M
cd $W
PG=$M/pg2; rm -rf $PG; mkdir -p $PG; chown postgres $PG
runuser -u postgres -- initdb -D $PG/data -A trust -U postgres >/dev/null
runuser -u postgres -- pg_ctl -D $PG/data -o "-p 55501 -k $PG -c listen_addresses=127.0.0.1" -l $PG/log -w start >/dev/null
psql -q -h 127.0.0.1 -p 55501 -U postgres -c "create user bench password 'bench-pw'" -c "create database mlflow owner bench"
rm -rf $M/sqlite2; mkdir -p $M/sqlite2
for round in 1 2 3; do
  for backend in postgres sqlite; do
    if [ $backend = postgres ]; then URI=postgresql://bench:bench-pw@127.0.0.1:55501/mlflow; else URI=sqlite:///$M/sqlite2/mlflow.db; fi
    S=$M/state2-$backend
    env -u MLFLOW_TRACKING_URI $PY run_search.py server --backend-store-uri $URI --artifacts-destination $M/art2-$backend \
       --state-dir $S --port 5092 --concurrent-trials 64 > $M/server2-$backend-$round.log 2>&1 &
    SP=$!
    for i in $(seq 120); do curl -sf http://127.0.0.1:5092/health >/dev/null && break; sleep 1; done
    MLFLOW_TRACKING_USERNAME=admin MLFLOW_TRACKING_PASSWORD=$(cat $S/admin-password) \
      timeout 1500 $PY run_search.py benchmark-tracking --tracking-uri http://127.0.0.1:5092 --writers 64 --epochs 10 \
      --out $M/repeat-$backend.csv > $M/bench2-$backend-$round.log 2>&1
    echo "round $round $backend rc=$?"; tail -1 $M/bench2-$backend-$round.log
    pkill -TERM -P $SP; kill $SP; wait $SP 2>/dev/null; sleep 3
  done
done
runuser -u postgres -- pg_ctl -D $PG/data -m fast -w stop >/dev/null
echo done

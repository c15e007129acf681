#!/usr/bin/env bash
# Queue benchmark: no-op tasks through our worker and through a Python
# Celery 5 worker, same Redis, same messages (queued by Python Celery's own
# producer), same concurrency, results stored. Prints tasks/s for each, the
# ratio, and each worker's resident memory when idle.
#
#   scripts/bench/queue.sh [N] [CONCURRENCY]        (defaults: 20000 tasks, 4)
#
# Needs: Redis on 127.0.0.1:6379, `pip install -r requirements-test.txt`,
# and builds the release binary. Throughput is measured from the first
# stored result to the last, so neither worker's start-up time counts.
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-20000}
C=${2:-4}
cargo build --release -q -p openthreat
BIN=$PWD/target/release/openthreat
HERE=$PWD/scripts/bench
REDIS=redis://127.0.0.1:6379/0

rss_kb() { # total VmRSS of a process and its children
  local total=0
  for p in $1 $(pgrep -P "$1" || true); do
    total=$((total + $(awk '/VmRSS/{print $2}' /proc/$p/status 2>/dev/null || echo 0)))
  done
  echo $total
}

count_results() { redis-cli --scan --pattern "$1celery-task-meta-*" | wc -l; }

measure() { # name prefix pid -> prints "name tasks/s"
  local name=$1 prefix=$2 pid=$3 first="" n=0
  while :; do
    n=$(count_results "$prefix")
    if [ -z "$first" ] && [ "$n" -gt 0 ]; then first=$(date +%s.%N); first_n=$n; fi
    [ "$n" -ge "$N" ] && break
    kill -0 "$pid" 2>/dev/null || { echo "$name worker died" >&2; exit 1; }
    sleep 0.05
  done
  local last; last=$(date +%s.%N)
  python3 -c "print('%s %.0f' % ('$name', ($N - $first_n) / ($last - $first)))"
}

run_one() { # name -> "name tasks/s rss_idle_kb"
  local name=$1 prefix="otbench-$1-$$-$RANDOM:"
  (cd "$HERE" && BENCH_PREFIX=$prefix python3 send.py "$N")
  local pid
  if [ "$name" = rust ]; then
    REDIS_URL="$REDIS?global_keyprefix=$prefix" OLLAMA_HOST=http://127.0.0.1:9 \
      OPENTHREAT_DATA_DIR=$(mktemp -d) RUST_LOG=warn "$BIN" worker -c "$C" >/dev/null 2>&1 &
    pid=$!
  else
    (cd "$HERE" && BENCH_PREFIX=$prefix exec celery -A celery_app worker -c "$C" --loglevel=WARNING >/dev/null 2>&1) &
    pid=$!
  fi
  local rate; rate=$(measure "$name" "$prefix" $pid)
  sleep 2
  local rss; rss=$(rss_kb $pid)
  kill -TERM $pid; wait $pid 2>/dev/null || true
  redis-cli --scan --pattern "$prefix*" | xargs -r -n 1000 redis-cli del >/dev/null
  echo "$rate $rss"
}

echo "N=$N concurrency=$C"
read -r _ rust_rate rust_rss < <(run_one rust)
read -r _ py_rate py_rss < <(run_one python)
echo "rust   worker: $rust_rate tasks/s, idle RSS $((rust_rss / 1024)) MB"
echo "celery worker: $py_rate tasks/s, idle RSS $((py_rss / 1024)) MB (main process + pool children)"
python3 -c "print('ratio: %.1fx' % ($rust_rate / $py_rate))"

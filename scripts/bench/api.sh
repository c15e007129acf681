#!/usr/bin/env bash
# API benchmark: COUNT CVEs generated from the real records, imported into
# SQLite and into PostgreSQL, then `openthreat serve` under `oha` at 64
# concurrent connections for each endpoint: requests/s, p50, p99, and the
# server's resident memory (VmRSS at the end, VmHWM = peak).
#
#   scripts/bench/api.sh [COUNT] [SECONDS] [STORES]
#     COUNT   CVEs to generate (default 300000)
#     SECONDS per endpoint (default 10)
#     STORES  "sqlite postgres" (default), or one of them
#
# Needs PostgreSQL on 127.0.0.1:5432 (user postgres, trust) for the
# PostgreSQL half (OPENTHREAT_TEST_PG_URL overrides the maintenance URL).
# Installs oha (crates.io) into target/bench-tools when it is not on PATH.
# Keeps the generated feed and databases in $BENCH_DIR (default
# target/bench-api) so a second run skips generating and importing; delete
# that folder to start again.
set -euo pipefail
cd "$(dirname "$0")/../.."
COUNT=${1:-300000}
SECS=${2:-10}
STORES=${3:-"sqlite postgres"}
CONNS=64
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
BENCH_DIR=${BENCH_DIR:-$TARGET/bench-api}
TOOLS=$TARGET/bench-tools
ADMIN_URL=${OPENTHREAT_TEST_PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}
PG_DB=ot_bench_api_$COUNT
mkdir -p "$BENCH_DIR"

cargo build --release -q -p openthreat --bin openthreat --example gen_feed
BIN=$TARGET/release/openthreat
GEN=$TARGET/release/examples/gen_feed

# LOADGEN=ab uses ApacheBench (apache2-utils) instead, e.g. while oha is
# still compiling; same connections and duration, percentiles from its table.
LOADGEN=${LOADGEN:-oha}
OHA=$(command -v oha || true)
if [ "$LOADGEN" = oha ] && [ -z "$OHA" ]; then
  if [ ! -x "$TOOLS/bin/oha" ]; then
    echo "installing oha into $TOOLS (once)" >&2
    cargo install oha --locked --root "$TOOLS" -q
  fi
  OHA=$TOOLS/bin/oha
fi

FEED=$BENCH_DIR/feed-$COUNT.json.gz
if [ ! -s "$FEED" ]; then
  "$GEN" "$FEED.tmp" "$COUNT"
  mv "$FEED.tmp" "$FEED"
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# The URL of a store holding the feed, importing it on first use.
prepare() { # store -> DATABASE_URL
  local store=$1 url done_mark
  if [ "$store" = sqlite ]; then
    url="sqlite://$BENCH_DIR/sqlite-$COUNT.db"
  else
    url="${ADMIN_URL%/*}/$PG_DB"
  fi
  done_mark=$BENCH_DIR/$store-$COUNT.imported
  if [ ! -e "$done_mark" ]; then
    if [ "$store" = sqlite ]; then
      rm -f "$BENCH_DIR/sqlite-$COUNT.db"*
    else
      psql "$ADMIN_URL" -qc "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" >/dev/null
      psql "$ADMIN_URL" -qc "CREATE DATABASE $PG_DB" >/dev/null
    fi
    DATABASE_URL=$url OPENTHREAT_DATA_DIR=$BENCH_DIR/data-$store "$BIN" migrate >&2
    echo "importing $COUNT CVEs into $store" >&2
    DATABASE_URL=$url OPENTHREAT_DATA_DIR=$BENCH_DIR/data-$store RUST_LOG=warn \
      "$BIN" ingest nvd --from "$FEED" --json >"$BENCH_DIR/$store-$COUNT.import.json"
    python3 - "$BENCH_DIR/$store-$COUNT.import.json" >&2 <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
d = r.get("details", {})
print(f"  imported {r['inserted']} in {r['duration_seconds']:.1f} s ({r['per_second']:.0f}/s), "
      f"of which search index {d.get('search_index_seconds', 0):.1f} s")
EOF
    if [ "$store" = postgres ]; then
      psql "$url" -qc "VACUUM ANALYZE" >/dev/null
    fi
    touch "$done_mark"
  fi
  echo "$url"
}

status_kb() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }

# One oha run: prints "requests/s p50_ms p99_ms errors".
load() { # url
  if [ "$LOADGEN" = ab ]; then
    ab -q -k -c $CONNS -t "$SECS" -n 100000000 "$1" 2>/dev/null | python3 -c '
import re, sys
t = sys.stdin.read()
rps = re.search(r"Requests per second:\s+([\d.]+)", t).group(1)
pct = dict(re.findall(r"^\s+(\d+)%\s+(\d+)", t, re.M))
bad = int(re.search(r"Failed requests:\s+(\d+)", t).group(1))
non2xx = re.search(r"Non-2xx responses:\s+(\d+)", t)
bad += int(non2xx.group(1)) if non2xx else 0
print("%.0f %s %s %d" % (float(rps), pct["50"], pct["99"], bad))'
    return
  fi
  # -w: requests still running at the deadline are waited for, so they count
  # with their real latency instead of as errors (and a slow endpoint still
  # reports percentiles).
  "$OHA" -z "${SECS}s" -w -c $CONNS --no-tui --output-format json "$1" 2>/dev/null | python3 -c '
import json, sys
r = json.load(sys.stdin)
s, p = r["summary"], r["latencyPercentiles"]
codes = r.get("statusCodeDistribution", {})
bad = sum(n for c, n in codes.items() if not c.startswith("2")) + sum(r.get("errorDistribution", {}).values())
ms = lambda v: "n/a" if v is None else "%.2f" % (v * 1000)
print("%.0f %s %s %d" % (s["requestsPerSec"] or 0, ms(p["p50"]), ms(p["p99"]), bad))'
}

echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg) before the run"
# Each store is served twice: with the response cache (the default, 5 s)
# and without it (OPENTHREAT_API_CACHE_SECONDS=0), which is what a request
# costs when its answer is not cached: a first visit, or after a write.
for store in $STORES; do
  url=$(prepare "$store")
  for cache in 5 0; do
  port=$(free_port)
  DATABASE_URL=$url OPENTHREAT_DATA_DIR=$BENCH_DIR/data-$store OPENTHREAT_BIND=127.0.0.1:$port \
    OPENTHREAT_API_CACHE_SECONDS=$cache \
    OLLAMA_HOST=http://127.0.0.1:9 RUST_LOG=warn "$BIN" serve >"$BENCH_DIR/serve-$store.log" 2>&1 &
  pid=$!
  trap 'kill $pid 2>/dev/null || true' EXIT
  base=http://127.0.0.1:$port
  for _ in $(seq 100); do
    curl -fs "$base/health" >/dev/null 2>&1 && break
    sleep 0.2
  done
  # A CVE that exists: the first of the default list.
  cve=$(curl -fs "$base/api/v1/vulnerabilities?page_size=1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["items"][0]["cve_id"])')
  # A common word: in a large share of the generated descriptions.
  word=${BENCH_WORD:-remote}
  total=$(curl -fs "$base/api/v1/search?q=$word&page_size=1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["total"])')
  echo
  echo "== $store, response cache ${cache}s: $COUNT CVEs, oha -c $CONNS for ${SECS}s each; search '$word' matches $total =="
  printf '%-34s %10s %9s %9s %7s\n' endpoint "req/s" "p50 ms" "p99 ms" errors
  for ep in "/api/v1/vulnerabilities" "/api/v1/vulnerabilities/$cve" "/api/v1/search?q=$word" "/api/v1/stats"; do
    read -r rps p50 p99 bad < <(load "$base$ep")
    printf '%-34s %10s %9s %9s %7s\n' "${ep/$cve/\{cve_id\}}" "$rps" "$p50" "$p99" "$bad"
  done
  echo "server memory: VmRSS $(( $(status_kb $pid VmRSS) / 1024 )) MB, peak VmHWM $(( $(status_kb $pid VmHWM) / 1024 )) MB"
  kill $pid; wait $pid 2>/dev/null || true
  trap - EXIT
  done
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"

#!/usr/bin/env bash
# Failover, shown: starts the local cluster (scripts/cluster.sh up, 3 coordinators, 4 storage
# nodes, 3 workers), runs a job of the synthetic model (each query 25 ms of CPU), SIGKILLs the
# leading coordinator and then a worker mid-job, and prints a timeline — kill, new leader,
# first commit after, batches leased again, job done — and an audit line: does every query
# have exactly one result?
#
# Needs bash, curl, grep, sed, sort. Environment: what cluster.sh reads; DEMO_QUERIES (default
# 600). Leaves the cluster running (scripts/cluster.sh down stops it, up restarts the killed
# processes).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
data=${IDUNNO_DATA:-$root/data}
queries=${DEMO_QUERIES:-600}
[[ "$queries" =~ ^[0-9]+$ ]] && [ "$queries" -gt 0 ] || { echo "DEMO_QUERIES must be a number" >&2; exit 2; }
export WORKERS=${WORKERS:-3}
"$root/scripts/cluster.sh" up >/dev/null
source "$root/scripts/http.sh"
IFS=, read -ra nodes <<<"$("$root/scripts/cluster.sh" coordinators)"
export IDUNNO_COORDINATORS=$("$root/scripts/cluster.sh" coordinators)
bin=${IDUNNO_BIN:-$root/target/release/idunno}

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
t0=$(now_ms)
at() { local ms=$(( $(now_ms) - t0 )); printf '%3d.%03d s  %s\n' $(( ms / 1000 )) $(( ms % 1000 )) "$*"; }

# call METHOD PATH [curl args…]: the body from the first coordinator that answers 2xx.
call() {
  local method=$1 path=$2 addr; shift 2
  for _ in $(seq 1 100); do
    for addr in "${nodes[@]}"; do
      api_curl -fsS -m 10 -X "$method" "$(base_url "$addr")$path" "$@" 2>/dev/null && return 0
    done
    sleep 0.1
  done
  echo "no coordinator answered $method $path" >&2
  return 1
}

# The model and one input; the job lists that input $queries times.
"$bin" model add demo-syn --arch synthetic --cost-ms 25 --weights generate:1 >/dev/null
call PUT /v1/files/demo/coffee.png -T "$root/samples/coffee.png" >/dev/null
inputs=$(printf '"demo/coffee.png",%.0s' $(seq 1 "$queries")); inputs="[${inputs%,}]"
job=$(call POST /v1/jobs -H 'content-type: application/json' \
  -d "{\"model\":\"demo-syn\",\"inputs\":$inputs,\"batch_size\":8,\"start\":true}" |
  grep -o '^{"id":[0-9]*' | sed 's/.*://')
t0=$(now_ms)
at "job $job started: $queries queries of 25 ms CPU each, batches of 8, $WORKERS workers"

done_count() { call GET "/v1/jobs/$job?stale=true" | grep -o '"done":[0-9]*' | sed 's/.*://'; }
until [ "$(done_count)" -ge $(( queries / 5 )) ]; do sleep 0.1; done
at "$(done_count) queries done; killing the leader"
"$root/scripts/kill-leader.sh" | while read -r line; do at "$line"; done
until [ "$(done_count)" -ge $(( queries / 2 )) ]; do sleep 0.1; done
at "$(done_count) queries done; killing a worker"
"$root/scripts/kill-worker.sh" | while read -r line; do at "$line"; done
until call GET "/v1/jobs/$job" | grep -q '"state":"done"'; do sleep 0.1; done
at "job $job done"

results=$(call GET "/v1/jobs/$job/results")
count=$(grep -o '"index":[0-9]*,"input"' <<<"$results" | wc -l)
unique=$(grep -o '"index":[0-9]*,"input"' <<<"$results" | sort -u | wc -l)
errors=$(grep -o '"error":' <<<"$results" | wc -l || true)
if [ "$count" -eq "$queries" ] && [ "$unique" -eq "$queries" ] && [ "$errors" -eq 0 ]; then
  echo "audit: every one of the $queries queries has exactly one result (no error results)"
else
  echo "audit FAILED: $count results, $unique distinct queries of $queries, $errors errors" >&2
  exit 1
fi

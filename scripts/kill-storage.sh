#!/usr/bin/env bash
# scripts/kill-storage.sh [ID] — SIGKILL storage node ID (e.g. s2) of the local cluster
# (scripts/cluster.sh), by default the first one running, then print how many seconds pass
# until the coordinators mark it dead (its replicas are then copied elsewhere).
# `scripts/cluster.sh up` restarts it.
# Environment: IDUNNO_DATA (data folder, as for cluster.sh), COORDINATOR_PORT.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
data=${IDUNNO_DATA:-$root/data}
source "$root/scripts/http.sh"
IFS=, read -ra coordinators <<<"$("$root/scripts/cluster.sh" coordinators)"

# alive PIDFILE: the process runs (a zombie does not count).
alive() {
  [ -f "$1" ] || return 1
  local state
  state=$(ps -o stat= -p "$(cat "$1")" 2>/dev/null) || return 1
  [[ -n "$state" && "$state" != Z* ]]
}

if [ $# -gt 1 ]; then
  echo "usage: $0 [ID]" >&2
  exit 2
fi
id=${1:-}
if [ -z "$id" ]; then
  shopt -s nullglob
  while read -r f; do
    if alive "$f"; then id=$(basename "$f" .pid); break; fi
  done < <(for f in "$data"/pids/s[0-9]*.pid; do echo "$f"; done | sort -V)
  [ -n "$id" ] || { echo "no storage node is running; is the cluster up?" >&2; exit 1; }
fi
[[ "$id" =~ ^[A-Za-z0-9_-]+$ ]] || { echo "$id is not a node id" >&2; exit 2; }

pidfile=$data/pids/$id.pid
[ -f "$pidfile" ] || { echo "no pid file for storage node $id ($pidfile)" >&2; exit 1; }
alive "$pidfile" || { echo "storage node $id is not running" >&2; exit 1; }
pid=$(cat "$pidfile")
kill -KILL "$pid"
start=$(date +%s%N)
echo "killed storage node $id (pid $pid) with SIGKILL"

# Wait until a coordinator lists it as dead (GET /v1/nodes: …{"id":"ID","addr":…,"alive":false…).
dead="\"id\":\"$id\",\"addr\":\"[^\"]*\",\"alive\":false"
for _ in $(seq 1 1000); do
  for addr in "${coordinators[@]}"; do
    if api_curl -fsS -m 1 "$(base_url "$addr")/v1/nodes" 2>/dev/null | grep -q "$dead"; then
      ms=$((($(date +%s%N) - start) / 1000000))
      printf 'the coordinators marked %s dead after %d.%03d s\n' "$id" $((ms / 1000)) $((ms % 1000))
      exit 0
    fi
  done
  sleep 0.01
done
echo "the coordinators did not mark $id dead within 10 s" >&2
exit 1

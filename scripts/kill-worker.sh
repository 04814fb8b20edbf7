#!/usr/bin/env bash
# Kill a worker of the local cluster (scripts/cluster.sh) with SIGKILL and print how many
# seconds pass until every batch it held is leased to another worker (or that it held none).
#   scripts/kill-worker.sh [NAME]     NAME: w1, w2, … (default: the first one running)
# `scripts/cluster.sh up` starts it again.
#
# Needs bash, curl, grep and sed. Environment: what cluster.sh reads (IDUNNO_DATA,
# COORDINATOR_PORT), IDUNNO_TOKEN (sent as the bearer token if set), KILL_WORKER_DEADLINE
# (seconds to wait, default 30).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
data=${IDUNNO_DATA:-$root/data}
source "$root/scripts/http.sh"
deadline_s=${KILL_WORKER_DEADLINE:-30}
[[ "$deadline_s" =~ ^[0-9]+$ ]] || { echo "KILL_WORKER_DEADLINE must be whole seconds" >&2; exit 2; }
IFS=, read -ra nodes <<<"$("$root/scripts/cluster.sh" coordinators)"

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

# get PATH: the body of the first coordinator that answers GET PATH.
get() {
  local addr
  for addr in "${nodes[@]}"; do
    api_curl -fsS -m 5 "$(base_url "$addr")$1" 2>/dev/null && return 0
  done
  echo "no coordinator answered GET $1" >&2
  return 1
}

alive() {
  [ -f "$1" ] || return 1
  local state
  state=$(ps -o stat= -p "$(cat "$1")" 2>/dev/null) || return 1
  [[ -n "$state" && "$state" != Z* ]]
}

name=${1:-}
if [ -z "$name" ]; then
  for f in $(ls "$data/pids"/w[0-9]*.pid 2>/dev/null | sort -V); do
    if alive "$f"; then name=$(basename "$f" .pid); break; fi
  done
fi
[ -n "$name" ] || { echo "no worker is running; is the cluster up?" >&2; exit 1; }
[[ "$name" =~ ^w[0-9]+$ ]] || { echo "a worker is named w1, w2, …, not $name" >&2; exit 2; }
pidfile=$data/pids/$name.pid
alive "$pidfile" || { echo "worker $name is not running" >&2; exit 1; }

# The worker's id: the freshest entry of that name.
workers=$(get /v1/workers)
id=$(grep -o "{\"id\":\"[^\"]*\",\"name\":\"$name\"[^}]*\"last_seen_ms_ago\":[0-9]*" <<<"$workers" |
  sed 's/.*"id":"\([^"]*\)".*"last_seen_ms_ago":\([0-9]*\)/\2 \1/' | sort -n | head -1 | cut -d' ' -f2)
[ -n "$id" ] || { echo "the coordinators do not know worker $name" >&2; exit 1; }

# What it holds now: "job batch lease" per line.
held=()
jobs=$(get "/v1/jobs?stale=true" | grep -o '"id":[0-9]*,"name":"[^"]*","model":"[^"]*","batch_size":[0-9]*,"weight":[0-9]*,"state":"running"' |
  sed 's/"id":\([0-9]*\),.*/\1/') || jobs=""
for job in $jobs; do
  while read -r batch lease; do
    [ -n "$batch" ] && held+=("$job $batch $lease")
  done < <(get "/v1/jobs/$job/batches?state=leased&stale=true" |
    grep -o "\"id\":\"[0-9]*-[0-9]*\",\"start\":[0-9]*,\"len\":[0-9]*,\"state\":{\"state\":\"leased\",\"worker\":\"$id\",\"lease_id\":[0-9]*" |
    sed 's/"id":"\([^"]*\)".*"lease_id":\([0-9]*\)/\1 \2/')
done

kill -KILL "$(cat "$pidfile")"
start=$(now_ms)
echo "killed worker $name ($id) with SIGKILL; it held ${#held[@]} batch(es)"
[ "${#held[@]}" -gt 0 ] || exit 0

# Every held batch is leased again once it has another lease id, or is done by another worker.
while :; do
  pending=0
  for entry in "${held[@]}"; do
    read -r job batch lease <<<"$entry"
    state=$(get "/v1/jobs/$job/batches" |
      grep -o "\"id\":\"$batch\",\"start\":[0-9]*,\"len\":[0-9]*,\"state\":{\"state\":\"[a-z]*\",\"[a-z_]*\":\"\?[^,\"]*\"\?,\"[a-z_]*\":\"\?[^,\"]*" || true)
    case "$state" in
      *'"state":"leased"'*"\"lease_id\":$lease") pending=$((pending + 1)) ;;
      *'"state":"leased"'*) ;;
      *'"state":"done"'*"\"worker\":\"$id\""*) ;;
      *'"state":"done"'*) ;;
      *) pending=$((pending + 1)) ;;
    esac
  done
  if [ "$pending" = 0 ]; then
    ms=$(( $(now_ms) - start ))
    printf 'its %d batch(es) were leased again after %d.%03d s\n' "${#held[@]}" $(( ms / 1000 )) $(( ms % 1000 ))
    exit 0
  fi
  if (( $(now_ms) - start > deadline_s * 1000 )); then
    echo "$pending of its batches not leased again within ${deadline_s} s" >&2
    exit 1
  fi
  sleep 0.05
done

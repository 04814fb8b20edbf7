#!/usr/bin/env bash
# Kill the Raft leader of the local cluster (scripts/cluster.sh) with SIGKILL and print how
# many seconds pass until a write commits again. `scripts/cluster.sh up` restarts it.
#
# Needs bash, curl, grep and sed. Environment: what cluster.sh reads (IDUNNO_DATA,
# COORDINATOR_PORT), IDUNNO_TOKEN (sent as the bearer token if set), KILL_LEADER_DEADLINE
# (seconds to wait for a write to commit, default 30).
#
# The write is `DELETE /v1/models/kill-leader~probe`: '~' is not allowed in model names, so
# that model never exists, and the delete changes nothing. It still goes through the Raft log
# (the leader commits the command and applying it answers 404 not_found), so its answer shows
# that a leader commits writes again, and it leaves nothing behind.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
data=${IDUNNO_DATA:-$root/data}
source "$root/scripts/http.sh"
deadline_s=${KILL_LEADER_DEADLINE:-30}
[[ "$deadline_s" =~ ^[0-9]+$ ]] || { echo "KILL_LEADER_DEADLINE must be whole seconds" >&2; exit 2; }
IFS=, read -ra nodes <<<"$("$root/scripts/cluster.sh" coordinators)"

# leader_of ADDR: the leader id that coordinator ADDR knows of (empty if none or no answer).
leader_of() {
  api_curl -fsS -m 2 "$(base_url "$1")/v1/cluster" 2>/dev/null |
    grep -o '"leader_id":[0-9]*' | sed 's/.*://' || true
}

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

leader=""
for addr in "${nodes[@]}"; do
  leader=$(leader_of "$addr")
  [ -n "$leader" ] && break
done
[ -n "$leader" ] || { echo "no leader found at ${nodes[*]}; is the cluster up?" >&2; exit 1; }

pidfile=$data/pids/coordinator$leader.pid
[ -f "$pidfile" ] || { echo "no pid file for coordinator $leader ($pidfile)" >&2; exit 1; }
kill -KILL "$(cat "$pidfile")"
start=$(now_ms)
echo "killed coordinator $leader (leader) with SIGKILL"

# Ask every coordinator in turn until one answers the probe with a committed 404.
last="no coordinator answered"
while :; do
  for addr in "${nodes[@]}"; do
    answer=$(api_curl -sS -m 2 -X DELETE -w '\n%{http_code}' \
      "$(base_url "$addr")/v1/models/kill-leader~probe" 2>&1) || answer=$'\n'"000"
    code=${answer##*$'\n'}
    body=${answer%$'\n'*}
    if [ "$code" = 404 ] && grep -q '"code":"not_found"' <<<"$body"; then
      end=$(now_ms)
      ms=$(( end - start ))
      new=$(leader_of "$addr")
      printf 'a write committed again after %d.%03d s (new leader: coordinator %s)\n' \
        $(( ms / 1000 )) $(( ms % 1000 )) "${new:-unknown}"
      exit 0
    fi
    last="$addr answered $code${body:+: $body}"
  done
  if (( $(now_ms) - start > deadline_s * 1000 )); then
    echo "no write committed within ${deadline_s} s of the kill; last: $last" >&2
    echo "the surviving coordinators' logs are in $data/logs/" >&2
    exit 1
  fi
  sleep 0.05
done

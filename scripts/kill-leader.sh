#!/usr/bin/env bash
# Kill the Raft leader of the local cluster (scripts/cluster.sh) with SIGKILL and print how
# many seconds pass until a write commits again. `scripts/cluster.sh up` restarts it.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
data=${IDUNNO_DATA:-$root/data}
IFS=, read -ra nodes <<<"$("$root/scripts/cluster.sh" coordinators)"

leader=""
for addr in "${nodes[@]}"; do
  leader=$(curl -fsS "http://$addr/v1/cluster" 2>/dev/null |
    python3 -c 'import json,sys; v=json.load(sys.stdin)["leader_id"]; print(v if v is not None else "")') || true
  [ -n "$leader" ] && break
done
[ -n "$leader" ] || { echo "no leader found; is the cluster up?" >&2; exit 1; }

pidfile=$data/pids/coordinator$leader.pid
[ -f "$pidfile" ] || { echo "no pid file for coordinator $leader ($pidfile)" >&2; exit 1; }
kill -KILL "$(cat "$pidfile")"
start=$(date +%s.%N)
echo "killed coordinator $leader (leader) with SIGKILL"

# A harmless write: (re)register a probe model, through any surviving coordinator.
body='{"name":"failover-probe","arch":"resnet18","weights":"models/failover-probe.safetensors"}'
while :; do
  for addr in "${nodes[@]}"; do
    if curl -fsS -m 2 -o /dev/null -X POST -H 'content-type: application/json' \
         -d "$body" "http://$addr/v1/models" 2>/dev/null; then
      end=$(date +%s.%N)
      new=$(curl -fsS "http://$addr/v1/cluster" | python3 -c 'import json,sys; print(json.load(sys.stdin)["leader_id"])')
      python3 -c "print(f'a write committed again after {$end - $start:.3f} s (new leader: coordinator $new)')"
      exit 0
    fi
  done
  sleep 0.02
done

#!/usr/bin/env bash
# A local IDunno cluster of separate processes on 127.0.0.1:
#   scripts/cluster.sh up       start 3 coordinators (those not running yet)
#   scripts/cluster.sh down     stop everything (SIGTERM, then SIGKILL)
#   scripts/cluster.sh status   which processes run, and the Raft group's view
# Data under ./data/<role><n>, logs under ./data/logs/, pids under ./data/pids/.
# Environment: IDUNNO_DATA (data folder), IDUNNO_BIN (binary; default target/release/idunno,
# built if missing), COORDINATOR_PORT (first port, default 7001).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
data=${IDUNNO_DATA:-$root/data}
bin=${IDUNNO_BIN:-$root/target/release/idunno}
cport=${COORDINATOR_PORT:-7001}
coordinators=3

coordinator_addr() { echo "127.0.0.1:$((cport + $1 - 1))"; }
coordinator_list() {
  local out="" i
  for i in $(seq 1 "$coordinators"); do out+="${out:+,}$(coordinator_addr "$i")"; done
  echo "$out"
}
peers() {
  local out="" i
  for i in $(seq 1 "$coordinators"); do out+="${out:+,}$i=$(coordinator_addr "$i")"; done
  echo "$out"
}

# alive PIDFILE: the process runs (a killed process not yet reaped, a zombie, does not count).
alive() {
  [ -f "$1" ] || return 1
  local state
  state=$(ps -o stat= -p "$(cat "$1")" 2>/dev/null) || return 1
  [[ -n "$state" && "$state" != Z* ]]
}

ensure_binary() {
  if [ ! -x "$bin" ]; then
    echo "building $bin (cargo build --release)…"
    (cd "$root" && cargo build --release --quiet)
  fi
}

# start NAME ARGS…: runs `idunno ARGS…` in the background unless NAME already runs.
start() {
  local name=$1; shift
  local pidfile=$data/pids/$name.pid
  if alive "$pidfile"; then
    echo "$name already running (pid $(cat "$pidfile"))"
    return
  fi
  nohup "$bin" "$@" >>"$data/logs/$name.log" 2>&1 &
  echo $! >"$pidfile"
  echo "started $name (pid $!)"
}

wait_ready() {
  local i
  for i in $(seq 1 100); do
    if curl -fsS "http://$(coordinator_addr 1)/readyz" >/dev/null 2>&1 ||
       curl -fsS "http://$(coordinator_addr 2)/readyz" >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.1
  done
  echo "the coordinators did not elect a leader; see $data/logs/" >&2
  return 1
}

up() {
  ensure_binary
  mkdir -p "$data/logs" "$data/pids"
  local i
  for i in $(seq 1 "$coordinators"); do
    start "coordinator$i" coordinator --id "$i" --listen "$(coordinator_addr "$i")" \
      --data "$data/coordinator$i" --peers "$(peers)"
  done
  wait_ready
  echo "cluster is up; try: IDUNNO_COORDINATORS=$(coordinator_list) $bin cluster status"
}

down() {
  local f name
  shopt -s nullglob
  for f in "$data"/pids/*.pid; do
    name=$(basename "$f" .pid)
    if alive "$f"; then
      kill -TERM "$(cat "$f")" 2>/dev/null || true
      for _ in $(seq 1 50); do alive "$f" || break; sleep 0.1; done
      alive "$f" && kill -KILL "$(cat "$f")" 2>/dev/null || true
      echo "stopped $name"
    fi
    rm -f "$f"
  done
}

status() {
  local f
  shopt -s nullglob
  for f in "$data"/pids/*.pid; do
    if alive "$f"; then echo "$(basename "$f" .pid): running (pid $(cat "$f"))"
    else echo "$(basename "$f" .pid): dead"; fi
  done
  if [ -x "$bin" ]; then
    "$bin" cluster status --coordinators "$(coordinator_list)" || true
  fi
}

case "${1:-status}" in
  up) up ;;
  down) down ;;
  status) status ;;
  coordinators) coordinator_list ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac

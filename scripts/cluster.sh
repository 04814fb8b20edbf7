#!/usr/bin/env bash
# A local IDunno cluster of separate processes on 127.0.0.1:
#   scripts/cluster.sh up       start 3 coordinators, the storage nodes and the workers
#                               (those not running yet)
#   scripts/cluster.sh down     stop everything (SIGTERM, then SIGKILL): workers, storage
#                               nodes, then coordinators
#   scripts/cluster.sh status   which processes run, the Raft group's view, the storage nodes
# Processes: coordinator1..3 (ports 7001-7003), storage nodes s1..sN (ports 7101..),
# workers w1..wM. Data under ./data/<name>, logs under ./data/logs/<name>.log, pids under
# ./data/pids/<name>.pid. The cluster secret (internal routes: Raft, storage-node
# registration and heartbeats, blobs on the storage nodes) is made once, on the first `up`,
# in ./data/secret (mode 600), and handed to every process as IDUNNO_CLUSTER_SECRET (not on
# the command line, where ps would show it).
# TLS=1 serves every role over TLS: on the first such `up` a throwaway CA and certificate are
# made (`idunno certs`) in ./data/tls and handed to every process as IDUNNO_TLS_DIR; while
# ./data/tls/ca.pem exists the cluster stays TLS (delete ./data/tls to go back to plain HTTP).
# Clients then use https:// and the CA: `IDUNNO_TLS_CA=data/tls/ca.pem idunno …`,
# `curl --cacert data/tls/ca.pem https://127.0.0.1:7001/…`.
# The client API is open (no token) on 127.0.0.1; set IDUNNO_TOKEN to require one.
# Environment: IDUNNO_DATA (data folder), IDUNNO_BIN (binary; default target/release/idunno,
# built if missing), COORDINATOR_PORT (first port, default 7001), STORAGE_NODES (default 4),
# STORAGE_PORT (first port, default 7101), WORKERS (default 2), TLS (1: TLS everywhere),
# IDUNNO_TOKEN (the client API's bearer token, handed to every process).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
data=${IDUNNO_DATA:-$root/data}
bin=${IDUNNO_BIN:-$root/target/release/idunno}
cport=${COORDINATOR_PORT:-7001}
sport=${STORAGE_PORT:-7101}
coordinators=3
storage_nodes=${STORAGE_NODES:-4}
workers=${WORKERS:-2}

for n in "$storage_nodes" "$workers" "$cport" "$sport"; do
  [[ "$n" =~ ^[0-9]+$ ]] || { echo "cluster.sh: $n is not a number" >&2; exit 2; }
done

tls_dir=$data/tls
# base_url, api_curl; IDUNNO_TLS_CA from an earlier `TLS=1 … up` (data/tls/ca.pem).
source "$root/scripts/http.sh"
# tls_on: this cluster serves TLS (asked for now, or made so by an earlier `TLS=1 … up`).
tls_on() { [ "${TLS:-0}" = 1 ] || [ -f "$tls_dir/ca.pem" ]; }
# fetch ADDR PATH: the answer of the node at ADDR (fails unless 2xx within 2 s).
fetch() { api_curl -fsS -m 2 "$(base_url "$1")$2"; }

coordinator_addr() { echo "127.0.0.1:$((cport + $1 - 1))"; }
storage_addr() { echo "127.0.0.1:$((sport + $1 - 1))"; }
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
    if fetch "$(coordinator_addr 1)" /readyz >/dev/null 2>&1 ||
       fetch "$(coordinator_addr 2)" /readyz >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.1
  done
  echo "the coordinators did not elect a leader; see $data/logs/" >&2
  return 1
}

# nodes_json: GET /v1/nodes from the first coordinator that answers (fails if none does).
nodes_json() {
  local addr
  for addr in $(coordinator_list | tr , ' '); do
    fetch "$addr" /v1/nodes 2>/dev/null && return 0
  done
  return 1
}

# missing_nodes: the storage nodes s1..sN the namespace does not list as alive.
missing_nodes() {
  local body i out=""
  body=$(nodes_json) || body=""
  for i in $(seq 1 "$storage_nodes"); do
    grep -q "\"id\":\"s$i\",\"addr\":\"[^\"]*\",\"alive\":true" <<<"$body" || out+="${out:+ }s$i"
  done
  echo "$out"
}

wait_storage() {
  local i
  for i in $(seq 1 100); do
    [ -z "$(missing_nodes)" ] && return 0
    sleep 0.1
  done
  echo "storage nodes not registered: $(missing_nodes); see $data/logs/" >&2
  return 1
}

# load_secret: the cluster's secret, made on first use; exported for every process started.
load_secret() {
  local file=$data/secret
  if [ ! -s "$file" ]; then
    (umask 077 && od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$file")
  fi
  IDUNNO_CLUSTER_SECRET=$(cat "$file")
  [ -n "$IDUNNO_CLUSTER_SECRET" ] || { echo "cluster.sh: $file is empty" >&2; exit 1; }
  export IDUNNO_CLUSTER_SECRET
}

# load_tls: with TLS, the CA and certificate (made on first use), for every process started.
load_tls() {
  tls_on || return 0
  if [ ! -f "$tls_dir/ca.pem" ]; then
    "$bin" certs "$tls_dir" >/dev/null
    echo "made a throwaway CA and certificate in $tls_dir"
  fi
  export IDUNNO_TLS_DIR=$tls_dir IDUNNO_TLS_CA=$tls_dir/ca.pem
}

up() {
  ensure_binary
  mkdir -p "$data/logs" "$data/pids"
  load_secret
  load_tls
  local i
  for i in $(seq 1 "$coordinators"); do
    start "coordinator$i" coordinator --id "$i" --listen "$(coordinator_addr "$i")" \
      --data "$data/coordinator$i" --peers "$(peers)"
  done
  wait_ready
  for i in $(seq 1 "$storage_nodes"); do
    start "s$i" sdfs-node --id "s$i" --listen "$(storage_addr "$i")" \
      --data "$data/s$i" --coordinators "$(coordinator_list)"
  done
  for i in $(seq 1 "$workers"); do
    start "w$i" worker --coordinators "$(coordinator_list)" --name "w$i" --cache "$data/w$i"
  done
  wait_storage
  local hint="IDUNNO_COORDINATORS=$(coordinator_list)"
  if tls_on; then hint+=" IDUNNO_TLS_CA=$tls_dir/ca.pem"; fi
  echo "cluster is up ($storage_nodes storage nodes alive, $workers workers, $(base_url "$(coordinator_addr 1)"));" \
    "try: $hint $bin cluster status"
}

# pidfiles ROLE…: the pid files of these roles (w: workers, s: storage nodes, coordinator), in
# the order given, numbers in order within a role.
pidfiles() {
  local role f
  shopt -s nullglob
  for role in "$@"; do
    for f in "$data/pids/$role"[0-9]*.pid; do echo "$f"; done | sort -V
  done
}

down() {
  local f name
  while read -r f; do
    name=$(basename "$f" .pid)
    if alive "$f"; then
      kill -TERM "$(cat "$f")" 2>/dev/null || true
      for _ in $(seq 1 50); do alive "$f" || break; sleep 0.1; done
      if alive "$f"; then kill -KILL "$(cat "$f")" 2>/dev/null || true; fi
      echo "stopped $name"
    fi
    rm -f "$f"
  done < <(pidfiles w s coordinator)
}

status() {
  local f running=0
  while read -r f; do
    if alive "$f"; then echo "$(basename "$f" .pid): running (pid $(cat "$f"))"
    else echo "$(basename "$f" .pid): dead"; fi
  done < <(pidfiles coordinator s w)
  while read -r f; do
    if alive "$f"; then running=1; fi
  done < <(pidfiles coordinator)
  if [ "$running" = 0 ]; then
    echo "no coordinator is running (scripts/cluster.sh up starts the cluster)"
    return
  fi
  if [ -x "$bin" ]; then
    "$bin" cluster status --coordinators "$(coordinator_list)" || true
    echo
    "$bin" sdfs --coordinators "$(coordinator_list)" store || true
  fi
  local addr body names
  for addr in $(coordinator_list | tr , ' '); do
    if body=$(fetch "$addr" /v1/workers 2>/dev/null); then
      echo
      names=$(grep -o '"name":"[^"]*"' <<<"$body" | cut -d'"' -f4 | paste -sd ' ' -) || true
      echo "workers registered: ${names:-none}"
      break
    fi
  done
}

case "${1:-status}" in
  up) up ;;
  down) down ;;
  status) status ;;
  coordinators) coordinator_list ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac

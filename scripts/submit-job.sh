#!/usr/bin/env bash
# submit-job.sh DIR MODEL [BATCH_SIZE] — run an inference job over a folder of images, over
# HTTP or HTTPS against a running cluster (scripts/cluster.sh up, or `idunno up --serve`):
#   1. uploads every regular file in DIR (hidden ones aside) to SDFS under
#      inputs/<folder>-<time>/ with curl -T. Workers decode by content, so a file is not
#      picked by its extension: one that is no image (or in a format workers do not read)
#      gets an error result of its own and the rest of the job runs;
#   2. creates and starts a job of MODEL (a registered model: `idunno model list`) over them;
#   3. polls the job, drawing its progress, and prints each image's top-3 classes.
# Env: IDUNNO_COORDINATORS (the CLI's comma-separated list) or IDUNNO_COORDINATOR (one
# address; `https://host:port` for TLS); default 127.0.0.1:7001. IDUNNO_TLS_CA: the cluster's
# CA (bare addresses then get https://). IDUNNO_TOKEN: the bearer token. A coordinator that cannot be reached, or has no leader
# (502/503/504), is skipped for the next one. Needs curl and python3 (to read and write JSON).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/http.sh"

if [[ $# -lt 2 || $# -gt 3 ]]; then
    echo "usage: $0 DIR MODEL [BATCH_SIZE]" >&2
    exit 2
fi
dir=$1
model=$2
batch=${3:-8}
IFS=',' read -r -a coordinators <<< "${IDUNNO_COORDINATOR:-${IDUNNO_COORDINATORS:-127.0.0.1:7001}}"
[[ ${#coordinators[@]} -gt 0 ]] || { echo "submit-job: no coordinator address given" >&2; exit 2; }
[[ -d "$dir" ]] || { echo "submit-job: $dir is not a folder" >&2; exit 2; }
[[ "$batch" =~ ^[1-9][0-9]*$ ]] || { echo "submit-job: BATCH_SIZE must be a positive number" >&2; exit 2; }
# The registry's own rule for names; it also keeps the name safe in a URL and in JSON.
[[ "$model" =~ ^[A-Za-z0-9._-]{1,128}$ ]] || {
    echo "submit-job: $model is no model name (1-128 characters of A-Z, a-z, 0-9, '.', '_', '-')" >&2
    exit 2
}

# field JSON PATH…: one value out of a JSON document (keys and indexes).
field() {
    python3 -c 'import json, sys
v = json.loads(sys.argv[1])
for k in sys.argv[2:]:
    v = v[int(k)] if isinstance(v, list) else v[k]
print(v)' "$@"
}
# urlencode NAME: percent-encoded for a URL path, its '/' kept.
urlencode() {
    python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1]))' "$1"
}
# request_id: a fresh idempotency key, so a request repeated on another coordinator after a
# lost answer is not carried out twice.
request_id() {
    python3 -c 'import uuid; print("submit-" + uuid.uuid4().hex)'
}

body=$(mktemp)
trap 'rm -f "$body"' EXIT
current=0
answer=
# call PATH CURL-ARGS…: the request on the coordinators in turn (the one that answered last
# first) until one answers; sets $answer to a 2xx answer's body, or exits with the server's
# error. Not run in a subshell, so the coordinator that answered is remembered.
call() {
    local path=$1 n=${#coordinators[@]} attempt addr code rc last=""
    shift
    for ((attempt = 0; attempt < 3 * n; attempt++)); do
        addr=${coordinators[current]}
        rc=0
        code=$(api_curl -sS --connect-timeout 2 -o "$body" -w '%{http_code}' "$@" "$(base_url "$addr")$path" 2>/dev/null) || rc=$?
        if [[ $rc -eq 0 && $code == 2* ]]; then
            answer=$(cat "$body")
            return 0
        fi
        if [[ $rc -eq 0 && $code != 502 && $code != 503 && $code != 504 ]]; then
            local error
            error=$(python3 -c 'import json, sys
try:
    print(json.load(open(sys.argv[1]))["error"])
except Exception:
    print(open(sys.argv[1], errors="replace").read().strip())' "$body")
            echo "submit-job: $addr answered $code: $error" >&2
            exit 1
        fi
        case $rc in
            0) last="$addr answered $code" ;;
            6 | 7 | 28 | 52 | 55 | 56) last="$addr cannot be reached (curl error $rc)" ;;
            *) echo "submit-job: curl failed with error $rc on $addr$path" >&2; exit 1 ;;
        esac
        current=$(((current + 1) % n))
        if (((attempt + 1) % n == 0)); then sleep 0.5; fi
    done
    echo "submit-job: no coordinator answered: $last" >&2
    exit 1
}

prefix="inputs/$(basename "$(cd "$dir" && pwd)")-$(date +%Y%m%d-%H%M%S)"
count=0
shopt -s nullglob
for file in "$dir"/*; do
    [[ -f "$file" ]] || continue
    call "/v1/files/$(urlencode "$prefix/$(basename "$file")")" -T "$file" -H "idempotency-key: $(request_id)"
    count=$((count + 1))
    printf '\ruploaded %d file(s) to %s/' "$count" "$prefix"
done
shopt -u nullglob
if [[ $count -eq 0 ]]; then
    echo "submit-job: no files in $dir" >&2
    exit 1
fi
echo

job_json=$(python3 -c 'import json, sys
print(json.dumps({"model": sys.argv[1], "inputs": {"prefix": sys.argv[2] + "/"},
                  "batch_size": int(sys.argv[3]), "start": True}))' "$model" "$prefix" "$batch")
call /v1/jobs -X POST -H 'content-type: application/json' -H "idempotency-key: $(request_id)" -d "$job_json"
job=$answer
id=$(field "$job" id)
echo "job $id: $model over $count file(s), batches of $batch"

width=40
started=$SECONDS
while :; do
    call "/v1/jobs/$id"
    job=$answer
    state=$(field "$job" state)
    done_=$(field "$job" done)
    total=$(field "$job" queries)
    filled=$((total > 0 ? done_ * width / total : width))
    bar=$(printf '%*s' "$filled" '' | tr ' ' '=')
    printf '\r[%-*s] %d/%d  %s  %ds' "$width" "$bar" "$done_" "$total" "$state" $((SECONDS - started))
    case $state in
        done) break ;;
        stopped | created) echo; echo "submit-job: job $id is $state" >&2; exit 1 ;;
    esac
    sleep 0.2
done
echo

call "/v1/jobs/$id/results"
printf '%s' "$answer" | python3 -c '
import json, sys
rows = []
for r in json.load(sys.stdin):
    if r.get("error"):
        rows.append([r["input"], "error: " + r["error"]])
    else:
        rows.append([r["input"]] + ["%s %.3f" % (c["label"], c["probability"]) for c in r["top"][:3]])
width = max(len(r[0]) for r in rows)
for r in rows:
    print(r[0].ljust(width), "  ".join(r[1:]), sep="  ")
'
echo
echo "$(field "$job" done) done, $(field "$job" failed) failed, in $((SECONDS - started)) s; job $id"

#!/usr/bin/env bash
# submit-job.sh DIR MODEL [BATCH_SIZE] — run an inference job over a folder of images, over
# plain HTTP against a running cluster (scripts/cluster.sh up, or `idunno up --serve`):
#   1. uploads every image in DIR (jpg, jpeg, png, gif, bmp, webp, tif, tiff) to SDFS under
#      inputs/<folder>-<time>/ with curl -T;
#   2. creates and starts a job of MODEL (a registered model: `idunno model list`) over them;
#   3. polls the job, drawing its progress, and prints each image's top-3 classes.
# Env: IDUNNO_COORDINATORS (the CLI's list; the first one is used) or IDUNNO_COORDINATOR (one
# address); default 127.0.0.1:7001. Needs curl and python3 (to read JSON).
set -euo pipefail

if [[ $# -lt 2 || $# -gt 3 ]]; then
    echo "usage: $0 DIR MODEL [BATCH_SIZE]" >&2
    exit 2
fi
dir=$1
model=$2
batch=${3:-8}
coordinators=${IDUNNO_COORDINATORS:-127.0.0.1:7001}
base="http://${IDUNNO_COORDINATOR:-${coordinators%%,*}}"
[[ -d "$dir" ]] || { echo "submit-job: $dir is not a folder" >&2; exit 2; }
[[ "$batch" =~ ^[1-9][0-9]*$ ]] || { echo "submit-job: BATCH_SIZE must be a positive number" >&2; exit 2; }

# field JSON PATH…: one value out of a JSON document (keys and indexes).
field() {
    python3 -c 'import json, sys
v = json.loads(sys.argv[1])
for k in sys.argv[2:]:
    v = v[int(k)] if isinstance(v, list) else v[k]
print(v)' "$@"
}
urlencode() {
    python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1]))' "$1"
}
# call CURL-ARGS…: curl that prints the server's JSON error and fails on an HTTP error.
call() {
    local out
    if ! out=$(curl -sS --fail-with-body "$@"); then
        echo "submit-job: ${out:-no answer from $base}" >&2
        exit 1
    fi
    printf '%s' "$out"
}

prefix="inputs/$(basename "$(cd "$dir" && pwd)")-$(date +%Y%m%d-%H%M%S)"
count=0
shopt -s nullglob nocaseglob
for file in "$dir"/*.{jpg,jpeg,png,gif,bmp,webp,tif,tiff}; do
    call -T "$file" "$base/v1/files/$prefix/$(urlencode "$(basename "$file")")" >/dev/null
    count=$((count + 1))
    printf '\ruploaded %d image(s) to %s/' "$count" "$prefix"
done
shopt -u nullglob nocaseglob
if [[ $count -eq 0 ]]; then
    echo "submit-job: no images in $dir" >&2
    exit 1
fi
echo

job=$(call -X POST "$base/v1/jobs" -H 'content-type: application/json' \
    -d "{\"model\": \"$model\", \"inputs\": {\"prefix\": \"$prefix/\"}, \"batch_size\": $batch, \"start\": true}")
id=$(field "$job" id)
echo "job $id: $model over $count image(s), batches of $batch"

width=40
started=$SECONDS
while :; do
    job=$(call "$base/v1/jobs/$id")
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

call "$base/v1/jobs/$id/results" | python3 -c '
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

# Sourced by the scripts that call the cluster with curl: plain HTTP or TLS, one rule.
#   base_url ADDR   ADDR with its scheme: an explicit http:// or https:// is kept; a bare
#                   host:port gets https:// when IDUNNO_TLS_CA is set, else http://
#   tls_args        curl arguments trusting IDUNNO_TLS_CA (none without it)
# IDUNNO_TLS_CA defaults to $data/tls/ca.pem when the caller's $data holds one (a cluster that
# `TLS=1 scripts/cluster.sh up` made), and is exported for the `idunno` CLI the script runs.
if [ -z "${IDUNNO_TLS_CA:-}" ] && [ -n "${data:-}" ] && [ -f "$data/tls/ca.pem" ]; then
  export IDUNNO_TLS_CA=$data/tls/ca.pem
fi
tls_args=()
if [ -n "${IDUNNO_TLS_CA:-}" ]; then tls_args=(--cacert "$IDUNNO_TLS_CA"); fi

base_url() {
  case $1 in
    http://* | https://*) echo "${1%/}" ;;
    *) if [ -n "${IDUNNO_TLS_CA:-}" ]; then echo "https://$1"; else echo "http://$1"; fi ;;
  esac
}

# Sourced by the scripts that call the cluster's API with curl: plain HTTP or TLS, the token,
# one rule for all of them.
#   base_url ADDR       ADDR with its scheme: an explicit http:// or https:// is kept; a bare
#                       host:port gets https:// when IDUNNO_TLS_CA is set, else http://
#   api_curl ARGS…      curl trusting IDUNNO_TLS_CA and sending IDUNNO_TOKEN, when set
# Both read the environment when called. IDUNNO_TLS_CA defaults to $data/tls/ca.pem when the
# caller's $data holds one (a cluster that `TLS=1 scripts/cluster.sh up` made), and is
# exported for the `idunno` CLI the script runs.
if [ -z "${IDUNNO_TLS_CA:-}" ] && [ -n "${data:-}" ] && [ -f "$data/tls/ca.pem" ]; then
  export IDUNNO_TLS_CA=$data/tls/ca.pem
fi

base_url() {
  case $1 in
    http://* | https://*) echo "${1%/}" ;;
    *) if [ -n "${IDUNNO_TLS_CA:-}" ]; then echo "https://$1"; else echo "http://$1"; fi ;;
  esac
}

api_curl() {
  local extra=()
  if [ -n "${IDUNNO_TLS_CA:-}" ]; then extra+=(--cacert "$IDUNNO_TLS_CA"); fi
  if [ -n "${IDUNNO_TOKEN:-}" ]; then extra+=(-H "authorization: Bearer $IDUNNO_TOKEN"); fi
  curl "${extra[@]}" "$@"
}

#!/usr/bin/env bash
# End-to-end test of --web.config.file with real clients: curl and a real Prometheus scraping the
# exporter over TLS with client certificates and HTTP Basic auth.
#
# Usage: scripts/ops/e2e-web-config.sh --binary PATH   (or VLLM_SENTINEL_BIN)
#
# What it does, every wait bounded by a deadline, every process killed on exit (trap), loopback
# and free ports only:
#  1. makes a CA, a server certificate (localhost, 127.0.0.1) and a client certificate (openssl);
#  2. writes a web config (exporter-toolkit format): TLS, RequireAndVerifyClientCert, one
#     basic-auth user; starts `vllm-sentinel serve --no-gpu --web.config.file ...`;
#  3. curl: no client certificate -> handshake fails; certificate but no/wrong password -> 401;
#     certificate and password -> 200;
#  4. Prometheus scrapes it (scheme https, tls_config with ca/cert/key, basic_auth) and
#     `up{job="sentinel-tls"} == 1` is read back through its HTTP API.
#
# The bcrypt hash of the password: E2E_WEB_HASH (with E2E_WEB_PASS, as the Rust test passes), else
# made with `htpasswd -nbBC 10` or python3's bcrypt module when one is there.
# Other knobs: E2E_DEADLINE_S (per wait, default 60), E2E_KEEP=1 keeps the temp dir.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=scripts/ops/lib.sh
. scripts/ops/lib.sh

bin="${VLLM_SENTINEL_BIN:-}"
while [ $# -gt 0 ]; do
    case "$1" in
        --binary) bin="$2"; shift 2 ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) ops_die "unknown argument $1 (see --help)" ;;
    esac
done
[ -n "$bin" ] || ops_die "give the built binary: --binary PATH or VLLM_SENTINEL_BIN"
[ -x "$bin" ] || ops_die "$bin is not an executable"
deadline="${E2E_DEADLINE_S:-60}"
command -v openssl >/dev/null 2>&1 || ops_die "openssl missing"
command -v curl >/dev/null 2>&1 || ops_die "curl missing"
ops_need_prometheus

user=e2e
pass="${E2E_WEB_PASS:-e2e-pass}"
hash="${E2E_WEB_HASH:-}"
if [ -z "$hash" ]; then
    if command -v htpasswd >/dev/null 2>&1; then
        hash=$(htpasswd -nbBC 10 "$user" "$pass" | cut -d: -f2-)
    elif python3 -c 'import bcrypt' >/dev/null 2>&1; then
        hash=$(python3 -c 'import bcrypt,sys; print(bcrypt.hashpw(sys.argv[1].encode(), bcrypt.gensalt(10)).decode())' "$pass")
    else
        ops_die "no bcrypt hash: set E2E_WEB_HASH (and E2E_WEB_PASS), or install htpasswd (apache2-utils)"
    fi
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/vllm-sentinel-e2e-web.XXXXXX")
pids=()
cleanup() {
    local rc=$?
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    if [ $rc -ne 0 ]; then
        for f in "$tmp"/*.log; do
            [ -f "$f" ] || continue
            echo "---- last lines of $(basename "$f")" >&2
            tail -n 25 "$f" >&2
        done
    fi
    if [ "${E2E_KEEP:-0}" = 1 ]; then echo "kept $tmp" >&2; else rm -rf "$tmp"; fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

# Polls "$@" (a command) every 0.2 s until it succeeds or $deadline seconds have passed.
wait_for() {
    local what="$1"; shift
    local end=$((SECONDS + deadline))
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $end ] || ops_die "timed out waiting for $what"
        sleep 0.2
    done
}

ops_step "certificates (openssl)"
(
    cd "$tmp"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=e2e CA" \
        -keyout ca.key -out ca.crt 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
        -keyout server.key -out server.csr 2>/dev/null
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' > server.ext
    openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
        -extfile server.ext -out server.crt 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=prometheus" \
        -keyout client.key -out client.csr 2>/dev/null
    printf 'extendedKeyUsage=clientAuth\n' > client.ext
    openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
        -extfile client.ext -out client.crt 2>/dev/null
) || ops_die "openssl could not make the certificates"

cat > "$tmp/web.yml" <<EOF
tls_server_config:
  cert_file: server.crt
  key_file: server.key
  client_auth_type: RequireAndVerifyClientCert
  client_ca_file: ca.crt
  min_version: TLS12
basic_auth_users:
  $user: '$hash'
EOF

"$bin" check-config --no-gpu --web.config.file "$tmp/web.yml" > "$tmp/check.log" 2>&1 \
    || ops_die "check-config refused the web config: $(cat "$tmp/check.log")"
if grep -qF "$hash" "$tmp/check.log"; then ops_die "check-config printed the bcrypt hash"; fi

port=$(free_port)
ops_step "starting vllm-sentinel on https://127.0.0.1:$port"
"$bin" serve --no-gpu --listen "127.0.0.1:$port" --web.config.file "$tmp/web.yml" \
    > "$tmp/sentinel.log" 2>&1 &
pids+=($!)
url="https://localhost:$port/metrics"
C=(curl -sS -o /dev/null -w '%{http_code}' --resolve "localhost:$port:127.0.0.1" --max-time 10 --cacert "$tmp/ca.crt")
# Ready: a TLS handshake with the client certificate answers (401 without the password).
wait_for "the exporter's TLS port" "${C[@]}" --cert "$tmp/client.crt" --key "$tmp/client.key" "$url"

ops_step "curl"
if "${C[@]}" "$url" >/dev/null 2>&1; then ops_die "served without a client certificate"; fi
code=$("${C[@]}" --cert "$tmp/client.crt" --key "$tmp/client.key" "$url" || true)
[ "$code" = 401 ] || ops_die "no password: got $code, want 401"
code=$("${C[@]}" --cert "$tmp/client.crt" --key "$tmp/client.key" -u "$user:wrong" "$url" || true)
[ "$code" = 401 ] || ops_die "wrong password: got $code, want 401"
code=$("${C[@]}" --cert "$tmp/client.crt" --key "$tmp/client.key" -u "$user:$pass" "$url" || true)
[ "$code" = 200 ] || ops_die "right password: got $code, want 200"
code=$("${C[@]}" --cert "$tmp/client.crt" --key "$tmp/client.key" "https://localhost:$port/healthz" || true)
[ "$code" = 401 ] || ops_die "/healthz without a password: got $code, want 401 (as exporter-toolkit)"

ops_step "Prometheus scraping over TLS with a client certificate and basic auth"
printf '%s' "$pass" > "$tmp/password"
prom_port=$(free_port)
cat > "$tmp/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: sentinel-tls
    scheme: https
    tls_config:
      ca_file: $tmp/ca.crt
      cert_file: $tmp/client.crt
      key_file: $tmp/client.key
      server_name: localhost
    basic_auth:
      username: $user
      password_file: $tmp/password
    static_configs:
      - targets: ['127.0.0.1:$port']
EOF
ops_start_prometheus "$tmp/prometheus.yml" "$tmp" "$prom_port"
up_is_1() {
    curl -sf --max-time 5 "$prom/api/v1/query" --data-urlencode 'query=up{job="sentinel-tls"} == 1' \
        | python3 -c 'import json,sys; sys.exit(0 if json.load(sys.stdin)["data"]["result"] else 1)'
}
wait_for 'up{job="sentinel-tls"} == 1 in Prometheus' up_is_1
echo "e2e-web-config: OK"

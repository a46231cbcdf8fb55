#!/usr/bin/env bash
# What ships besides the binary, checked by real tools (tier 3b of scripts/test.sh):
#   1. deploy/kubernetes/: core kinds with kubernetes-validate --strict (the Kubernetes API's own
#      OpenAPI schemas, bundled in the package: works offline); the ServiceMonitor and
#      PrometheusRule against deploy/schemas/*.schema.json (our strict schemas of the Prometheus
#      Operator's monitoring.coreos.com/v1 fields);
#   2. docker-compose.yml with check-jsonschema --builtin-schema vendor.compose-spec;
#   3. the dependency policy in deny.toml: cargo deny check licenses bans sources (offline:
#      it reads Cargo.lock and the local registry cache; `advisories` needs the RustSec
#      database, which cannot be fetched here, so it is not run: docs/supply-chain.md).
# Each check is first shown to fail on a broken copy of its input, so a tool that silently
# validates nothing is caught. The Python tools live in a venv and cargo-deny in a tool root,
# both under ~/.cache/vllm-sentinel (made on first use, reused by later runs).
set -euo pipefail
cd "$(dirname "$0")/.."

cache="${VLLM_SENTINEL_CACHE:-$HOME/.cache/vllm-sentinel}"
venv="$cache/schema-venv"
tools="$cache/tools"
KV_VERSION=1.37.0
CJ_VERSION=0.39.0
DENY_VERSION=0.20.2

if ! "$venv/bin/python" -c 'import kubernetes_validate, check_jsonschema' 2>/dev/null \
    || [ "$("$venv/bin/kubernetes-validate" --version 2>/dev/null | awk '{print $NF}')" != "$KV_VERSION" ]; then
    echo "==> making $venv (kubernetes-validate $KV_VERSION, check-jsonschema $CJ_VERSION)"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "kubernetes-validate==$KV_VERSION" "check-jsonschema==$CJ_VERSION"
fi
if [ "$("$tools/bin/cargo-deny" --version 2>/dev/null | awk '{print $2}')" != "$DENY_VERSION" ]; then
    echo "==> installing cargo-deny $DENY_VERSION into $tools (once)"
    cargo install --locked --quiet --root "$tools" --version "$DENY_VERSION" cargo-deny
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
fail=0

# expect_fail DESCRIPTION COMMAND...: the command must exit non-zero.
expect_fail() {
    local what="$1"; shift
    if "$@" >"$tmp/out" 2>&1; then
        echo "FAIL: the check accepted $what"; cat "$tmp/out"; fail=1
    else
        echo "ok: the check refuses $what"
    fi
}
# expect_pass DESCRIPTION COMMAND...
expect_pass() {
    local what="$1"; shift
    if "$@" >"$tmp/out" 2>&1; then
        echo "ok: $what"
    else
        echo "FAIL: $what"; cat "$tmp/out"; fail=1
    fi
}

kv() { "$venv/bin/kubernetes-validate" --strict --quiet "$@"; }
cj() { "$venv/bin/check-jsonschema" "$@"; }

# 1. Kubernetes. A kind without a schema is only a warning to kubernetes-validate: the CRs are
# checked by our schemas, and every other file must have no warning at all.
for f in deploy/kubernetes/*.yaml; do
    case "$(awk '/^kind:/ {print $2; exit}' "$f")" in
        ServiceMonitor) expect_pass "$f (ServiceMonitor schema)" cj --schemafile deploy/schemas/servicemonitor.schema.json "$f" ;;
        PrometheusRule) expect_pass "$f (PrometheusRule schema)" cj --schemafile deploy/schemas/prometheusrule.schema.json "$f" ;;
        *)
            expect_pass "$f (kubernetes-validate --strict)" kv "$f"
            if grep -q WARN "$tmp/out"; then echo "FAIL: $f: $(cat "$tmp/out")"; fail=1; fi
            ;;
    esac
done
sed 's/containerPort:/containerPorts:/' deploy/kubernetes/vllm-sentinel-sidecar.yaml >"$tmp/bad-sidecar.yaml"
expect_fail "a misspelt key in the Deployment" kv "$tmp/bad-sidecar.yaml"
sed 's/scrapeTimeout:/scrapeTimout:/' deploy/kubernetes/servicemonitor.yaml >"$tmp/bad-sm.yaml"
expect_fail "a misspelt key in the ServiceMonitor" cj --schemafile deploy/schemas/servicemonitor.schema.json "$tmp/bad-sm.yaml"
sed '0,/      for: /s//      fore: /' deploy/kubernetes/prometheusrule.yaml >"$tmp/bad-rule.yaml"
expect_fail "a misspelt key in the PrometheusRule" cj --schemafile deploy/schemas/prometheusrule.schema.json "$tmp/bad-rule.yaml"

# 2. Compose.
expect_pass "docker-compose.yml (compose-spec)" cj --builtin-schema vendor.compose-spec docker-compose.yml
sed '0,/^services:/s//servics:/' docker-compose.yml >"$tmp/bad-compose.yml"
expect_fail "a misspelt top-level key in docker-compose.yml" cj --builtin-schema vendor.compose-spec "$tmp/bad-compose.yml"

# 3. Dependencies. Every crate of Cargo.lock is fetched first (a no-op when the registry cache
# has them; a fresh machine downloads them as `cargo build` does), so that the check itself runs
# with --offline: cargo-deny reads `cargo metadata`, which needs the crates of every platform and
# cfg (Windows-only crates, tracing's `valuable`), not only those a Linux build downloads.
cargo fetch --locked --quiet
deny() { "$tools/bin/cargo-deny" --offline --manifest-path Cargo.toml "$@" check licenses bans sources; }
expect_pass "cargo deny check licenses bans sources" deny
python3 - "$tmp/deny.toml" <<'PY'
import re, sys
s = open("deny.toml").read()
s, n = re.subn(r"(?ms)^allow = \[.*?^\]", 'allow = ["MIT"]', s, count=1)
assert n == 1, "deny.toml has no [licenses] allow list"
open(sys.argv[1], "w").write(s)
PY
expect_fail "a licence policy that allows only MIT" deny --config "$tmp/deny.toml"
if ! grep -q "rejected: license is not explicitly allowed" "$tmp/out"; then
    echo "FAIL: the MIT-only policy failed for another reason:"; cat "$tmp/out"; fail=1
fi

exit "$fail"

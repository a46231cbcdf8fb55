#!/usr/bin/env bash
# Runs every test of vllm-sentinel, installing what it needs:
#   1. system packages (curl, openssl, Prometheus + promtool) when missing;
#   2. the unit and integration tests (cargo test);
#   3. the dashboards/alerts checks: promtool unit tests, static checks, and an end-to-end run
#      of a real Prometheus scraping the daemon against the simulator;
#   3b. what ships besides the binary, with real tools (scripts/check-packaging.sh): the
#      Kubernetes manifests (kubernetes-validate, our Prometheus Operator schemas), the compose
#      file (compose-spec schema), and `cargo deny check licenses bans sources`;
#   4. the status page and the experiments' --html reports in a real browser: Debian's Chromium (installed with apt-get when missing)
#      drives `/` against `vllm-sentinel demo` (tests/browser/status_page.py, < 60 s);
#   5. the real-vLLM tier: vLLM 0.32 on this machine's CPU (installed once into a cache outside
#      the clone), the daemon and the one-shot experiments against it.
# VLLM_SENTINEL_SKIP_REAL_VLLM=1 skips tier 5 explicitly (CI never sets it).
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s)
step() { printf '\n==> [%4ss] %s\n' "$(( $(date +%s) - t0 ))" "$*"; }

need_pkgs=()
command -v curl >/dev/null 2>&1 || need_pkgs+=(curl)
command -v promtool >/dev/null 2>&1 || need_pkgs+=(prometheus)
command -v python3 >/dev/null 2>&1 || need_pkgs+=(python3 python3-venv)
command -v openssl >/dev/null 2>&1 || need_pkgs+=(openssl)
if [ ${#need_pkgs[@]} -gt 0 ]; then
    step "installing ${need_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi

# A fresh clone gains nothing from incremental compilation, and its cache is the largest part of
# target/debug; CI runs without it.
if [ -n "${CI:-}" ]; then export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"; fi
step "disk: $(df -h --output=avail . | tail -1 | tr -d ' ') free where target/ is built"

# The tests run in the dev profile (no LTO: the lib's unit tests and one integration-test binary,
# tests/it/, link in seconds); the
# product binary that the real-vLLM tier runs is the release build users get.
step "cargo build --release --bin vllm-sentinel"
cargo build --release --locked --bin vllm-sentinel

step "cargo test"
cargo test --locked --no-fail-fast 2>&1 | tee target/cargo-test.log

step "deployment files and dependency policy (scripts/check-packaging.sh)"
scripts/check-packaging.sh

# ---- Status page in a real browser -------------------------------------------------------
# Separate from cargo test: it needs Chromium, which is installed here when missing.
if ! command -v chromium >/dev/null 2>&1; then
    step "installing chromium (status page browser test)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
step "status page in Chromium (tests/browser/status_page.py)"
timeout 120 python3 tests/browser/status_page.py target/release/vllm-sentinel
step "experiment HTML reports in Chromium (tests/browser/report_html.py)"
timeout 300 python3 tests/browser/report_html.py target/release/vllm-sentinel

if [ "${VLLM_SENTINEL_SKIP_REAL_VLLM:-0}" = 1 ]; then
    step "real-vLLM tier SKIPPED: VLLM_SENTINEL_SKIP_REAL_VLLM=1 was set explicitly"
else
    step "real-vLLM tier (scripts/e2e-real-vllm.sh)"
    scripts/e2e-real-vllm.sh target/release/vllm-sentinel
fi

step "all tests passed"
grep -E '^test result:' target/cargo-test.log | awk '{p+=$4; f+=$6} END {printf "cargo: %d passed, %d failed\n", p, f}'

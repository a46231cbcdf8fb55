#!/usr/bin/env bash
# Static and promtool tests of the ops files: rules, dashboards, compose stack, Dockerfile,
# Kubernetes manifests. Installs what it needs (Debian's prometheus package for promtool, PyYAML
# in a venv under ${XDG_CACHE_HOME:-~/.cache}/vllm-sentinel/ops-venv). Exits non-zero on any failure.
#   scripts/ops/test-static.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=scripts/ops/lib.sh
. scripts/ops/lib.sh

ops_need_prometheus
PY=$(ops_venv_python)

ops_step "promtool check rules alerts/*.yml"
promtool check rules alerts/*.yml

ops_step "promtool test rules alerts/tests/*.yml"
promtool test rules alerts/tests/*.yml

ops_step "promtool check config prometheus/prometheus.yml (rule files beside it, as in the container)"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp prometheus/prometheus.yml "$tmp/prometheus.yml"
ln -s "$PWD/alerts" "$tmp/alerts"
promtool check config "$tmp/prometheus.yml"

ops_step "dashboards are what scripts/ops/gen-dashboards.py generates"
python3 scripts/ops/gen-dashboards.py --check

ops_step "deploy/kubernetes/prometheusrule.yaml is what scripts/ops/gen-prometheusrule.py generates"
"$PY" scripts/ops/gen-prometheusrule.py --check

ops_step "static checks (with a self-test of the checker)"
"$PY" scripts/ops/check_static.py --selftest

ops_step "e2e query extraction (dry run, no binary)"
"$PY" scripts/ops/e2e_queries.py --list >/dev/null
"$PY" scripts/ops/e2e_queries.py --selftest >/dev/null || ops_die "e2e verdict self-test failed"

echo "test-static: OK"

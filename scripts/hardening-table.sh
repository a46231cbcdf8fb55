#!/usr/bin/env bash
# The defect table of issue 14: runs exactly the regression tests listed in docs/hardening.md
# and prints one Markdown row per test: defect, test, expected, observed (pass/fail).
#
#   scripts/hardening-table.sh            # every row
#   scripts/hardening-table.sh 5 14       # only defects 5 and 14
#
# Kinds of test: `it` (cargo test --test it NAME -- --exact), `lib` (cargo test --lib NAME --
# --exact), `example` (cargo test --example prober_bench NAME -- --exact), `promtool` (promtool test rules FILE; "skipped" without promtool). The exit status
# is 1 when a row failed. Builds with CARGO_BUILD_JOBS (default 1).
set -uo pipefail
cd "$(dirname "$0")/.."
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-1}

# defect | kind | test | expected
ROWS=$(
    cat <<'EOF'
1 credentials in the target URL|it|prober_daemon::url_credentials_are_basic_auth_and_never_shown|sent as Basic auth on discovery, /tokenize and every probe; never in a label, the status board or /metrics
1 credentials in the target URL|it|cli_binary::credentials_in_the_target_url_are_never_printed|check-config shows the target without user:password and says HTTP Basic; errors never print the password
1 credentials in the target URL|lib|config::target::tests::url_credentials_are_decoded_and_redacted|percent-decoded, stripped from the URL and the target label
1 credentials in the target URL|lib|config::target::tests::basic_authorization_is_rfc7617_base64|Authorization: Basic per RFC 7617
1 credentials in the target URL|lib|scrape::tests::url_credentials_become_basic_auth_and_leave_the_urls|the scraper sends Basic auth, its URLs carry no userinfo
2 a 200 with no output is ok|it|prober_request::a_200_without_generated_output_is_empty|outcome empty, not ok; no latency sample
2 a 200 with no output is ok|it|prober_daemon::an_instant_empty_server_is_not_hammered|closed loop backs off after empty answers (resend floor)
3 uncapped reads|it|prober_request::discovery_reads_are_capped|a huge /v1/models or /tokenize answer is a classified failure, not an unbounded read
3 uncapped reads|it|prober_request::huge_response_is_capped|a probe response past max_response_bytes is malformed (the canary reads through the same capped reader)
4 huge prompt_tokens|it|config_files::every_bad_config_fails_with_its_message|prompt_tokens/max_tokens over 10,000,000 refused at load, naming the key
4 huge prompt_tokens|it|exporter_server::a_reload_with_a_huge_prompt_is_refused_with_the_reason|POST /-/reload with an out-of-bounds token count: 400 with the reason, running config kept
5 exporter idle connections|it|exporter_server::a_trickled_request_head_is_cut_at_the_header_read_timeout|slowloris head cut at header_read_timeout
5 exporter idle connections|it|exporter_server::a_silent_connection_is_closed_after_the_idle_timeout|silent connection closed at idle_timeout
5 exporter idle connections|it|exporter_server::a_scrape_is_served_with_every_slot_held_by_idle_connections|at max_connections the longest-idle is closed; a scrape is served
6 POST /-/reload ungated|it|exporter_server::reload_over_http_is_refused_unless_lifecycle_is_enabled|403 unless --web.enable-lifecycle; SIGHUP still reloads
6 POST /-/reload ungated|it|cli_binary::check_config_reports_the_reload_endpoint_state|check-config says whether the endpoint is on
7 undiscovered target invisible|it|prober_daemon::an_undiscovered_target_is_visible_and_not_ready|target_discovered 0 and discovery_failures_total{reason} exported; /readyz 503 naming the target and why
7 undiscovered target invisible|promtool|alerts/tests/availability.yml|the discovery-failing alert fires after 5 min
8 scraper redirects and proxy|lib|scrape::tests::redirects_are_followed_within_the_origin_only|a same-origin redirect is followed; a cross-origin one is not (a 302 failure), so credentials stay with the origin
8 scraper redirects and proxy|it|cli_binary::proxy_variables_are_ignored_by_the_scraper|HTTP(S)_PROXY/ALL_PROXY with credentials set: the scrape goes direct, the proxy is never contacted
9 API key with CR/LF|it|config_files::an_api_key_with_a_line_break_is_refused_at_load_naming_its_source|load error naming the variable or file
9 API key with CR/LF|it|cli_binary::an_api_key_env_with_cr_lf_fails_check_config|check-config exits non-zero with the reason
9 API key with CR/LF|it|prober_http1::a_key_that_is_not_a_header_value_is_refused_before_sending|nothing is sent with an invalid header value
10 cancelled during the grace|it|prober_daemon::cancelled_probes_are_scrapeable_after_the_grace|outcome cancelled counted and scrapable during shutdown_linger
10 cancelled during the grace|it|prober_daemon::in_flight_probes_finish_within_the_grace|probes finishing inside the grace are ok, not cancelled
11 target with a query|it|cli_binary::a_target_with_a_query_or_fragment_is_refused|clear error naming the query/fragment
11 VLLM_SENTINEL_NO_GPU=1|it|cli_binary::boolean_env_variables_take_1_0_true_false_yes_no|1/0, true/false, yes/no, on/off accepted
11 --rate -1|it|cli_binary::a_negative_rate_or_concurrency_says_must_be_positive|"must be positive", not a parser error about flags
11 --rate -1|lib|cli::tests::negative_rate_and_concurrency_say_must_be_positive|the same at the parser
11 garbage RUST_LOG|it|cli_binary::a_garbage_rust_log_fails_at_start_up|start-up error naming the source
11 garbage RUST_LOG|lib|telemetry::tests::a_garbage_rust_log_is_an_error_naming_it|the filter error names RUST_LOG
11 simulator bodies over 2 MiB|it|sim_wire::bodies_over_two_mib_are_served_like_vllm|a prompt body over 2 MiB is answered as vLLM does (context-length 400), not 413
12 GPU Xid alert first event|promtool|alerts/tests/gpu.yml|Xid alerts fire on the first event of a code (series absent before)
13 prober-overhead script honesty|example|tests::null_client_finds_markers_split_at_every_byte|a response split between two reads at any byte: ok, every event counted, socket kept
13 prober-overhead script honesty|example|tests::null_client_times_out_on_a_stalled_stream|a stalled stream ends as timeout_request after 30 s, socket dropped
14 parser conformance|it|scrape_conformance::scrape_conformance_corpus|every corpus file gives its expected result, valid lines kept
14 parser conformance|it|scrape_conformance::scrape_conformance_every_file_is_listed|every corpus file is in expect.tsv
14 parser conformance|lib|scrape::expfmt::tests::openmetrics_only_counter_unit_and_count_rules|the three OpenMetrics-only rules flag only their family
14 parser conformance|lib|scrape::normalize::tests::flagged_values_are_never_used|no flagged value reaches the normalised series
EOF
)

want=("$@")
selected() {
    local d=${1%% *}
    [[ ${#want[@]} -eq 0 ]] && return 0
    local w
    for w in "${want[@]}"; do [[ $w == "$d" ]] && return 0; done
    return 1
}

# Build both test binaries once, so each row only runs its test.
cargo test -q --no-run --lib --test it --example prober_bench >/dev/null 2>&1 || {
    echo "the tests do not build: cargo test --no-run --lib --test it --example prober_bench" >&2
    exit 2
}

failed=0
echo "| defect | test | expected | observed |"
echo "|---|---|---|---|"
while IFS='|' read -r defect kind name expected; do
    [[ -z $defect ]] && continue
    selected "$defect" || continue
    case $kind in
    it) cmd=(cargo test -q --test it "$name" -- --exact) ;;
    lib) cmd=(cargo test -q --lib "$name" -- --exact) ;;
    example) cmd=(cargo test -q --example prober_bench "$name" -- --exact) ;;
    promtool)
        if ! command -v promtool >/dev/null; then
            echo "| $defect | \`promtool test rules $name\` | $expected | skipped (no promtool) |"
            continue
        fi
        cmd=(promtool test rules "$name")
        ;;
    *) echo "unknown kind $kind" >&2; exit 2 ;;
    esac
    out=$("${cmd[@]}" 2>&1)
    rc=$?
    # A filter that matches nothing passes silently: require that the test ran.
    if [[ $rc -eq 0 && $kind != promtool ]] && ! grep -q "1 passed" <<<"$out"; then rc=3; fi
    if [[ $rc -eq 0 ]]; then observed=pass; else observed="FAIL"; failed=1; fi
    label=$name
    [[ $kind == promtool ]] && label="promtool test rules $name"
    [[ $kind == lib ]] && label="src (lib) $name"
    [[ $kind == example ]] && label="examples/prober_bench.rs $name"
    [[ $kind == it ]] && label="tests/it/$name"
    echo "| $defect | \`$label\` | $expected | $observed |"
done <<<"$ROWS"
echo
echo "Not covered by a test: 13's negative CPU figure (bench/prober-overhead.sh cpu_ticks); see docs/hardening.md."
exit "$failed"

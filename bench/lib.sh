# Shared helpers of the benchmark scripts (sourced).
# shellcheck shell=bash

# With scheduler autogroups (one per session) `nice` only ranks processes inside their own
# session's group, and each other session (a compiler, say) gets as much CPU as this whole
# benchmark. raise_autogroup raises this session's group to -20 when PRIO is set, and
# restore_autogroup (call it from the EXIT trap) puts back the value it had: the group is the
# caller's whole session (the shell the benchmark was started from), which must not stay raised.
AUTOGROUP_SAVED=
raise_autogroup() {
    if [[ -n ${PRIO:-} && -w /proc/self/autogroup ]]; then
        AUTOGROUP_SAVED=$(awk '{print $NF}' /proc/self/autogroup 2>/dev/null || true)
        echo -20 >/proc/self/autogroup 2>/dev/null || AUTOGROUP_SAVED=
    fi
}
restore_autogroup() {
    if [[ -n $AUTOGROUP_SAVED ]]; then
        echo "$AUTOGROUP_SAVED" >/proc/self/autogroup 2>/dev/null || true
    fi
}

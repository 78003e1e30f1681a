#!/usr/bin/env bash
# run.sh SECONDS — run every built libFuzzer target build/fuzz/fuzz_* for SECONDS each,
# FUZZ_JOBS (default: the number of cores) at a time.
#
# Each target starts from its checked-in seeds tests/fuzz/corpus/<name>, copied into the scratch
# corpus build/fuzz/corpus-work/<name> (new inputs land there, never in git), with the
# dictionary tests/fuzz/<proto>.dict when one exists (imap.dict for fuzz_imap_*, pop3.dict for
# fuzz_pop3*, backend_login.dict for fuzz_backend_login, authhttp.dict for fuzz_authhttp,
# ldap.dict for fuzz_ldap*).
# Crash/leak/timeout reproducers go to build/fuzz/artifacts/<name>/.
# Prints one summary line per target; exits non-zero if any target failed, naming it.
# FUZZ_BUILD=dir uses targets (and scratch dirs) under dir instead of build/fuzz.
set -u

secs=${1:-60}
case $secs in '' | *[!0-9]*) echo "usage: $0 SECONDS" >&2; exit 2 ;; esac

root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root" || exit 2

shopt -s nullglob
targets=()
out=${FUZZ_BUILD:-build/fuzz}
for bin in "$out"/fuzz_*; do
    [ -f "$bin" ] && [ -x "$bin" ] && targets+=("$bin")
done
if [ ${#targets[@]} -eq 0 ]; then
    echo "run.sh: no fuzz targets in $out (make fuzz-build first)" >&2
    exit 2
fi

# One target: fuzz it and write its summary line (and the first line of a failure report) to
# $out/NAME.result; the last word of the first line is OK or FAILED.
fuzz_one() {
    local bin=$1 name seeds work art log dict rc execs cov ncorp crash line
    name=$(basename "$bin")
    seeds=tests/fuzz/corpus/$name
    work=$out/corpus-work/$name
    art=$out/artifacts/$name
    log=$out/$name.log
    mkdir -p "$work" "$art"
    if [ -d "$seeds" ]; then
        cp -pR "$seeds"/. "$work"/
    fi

    dict=
    case $name in
    fuzz_imap_*) dict=tests/fuzz/imap.dict ;;
    fuzz_pop3*) dict=tests/fuzz/pop3.dict ;;
    fuzz_backend_login) dict=tests/fuzz/backend_login.dict ;;
    fuzz_authhttp) dict=tests/fuzz/authhttp.dict ;;
    fuzz_ldap*) dict=tests/fuzz/ldap.dict ;;
    esac
    local args=(-max_total_time="$secs" -timeout=25 -rss_limit_mb=2048 -print_final_stats=1
                -artifact_prefix="$art/")
    [ -n "$dict" ] && [ -f "$dict" ] && args+=(-dict="$dict")

    echo "== $name (${secs}s${dict:+, dict $(basename "$dict")})"
    "$bin" "${args[@]}" "$work" >"$log" 2>&1
    rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | awk '{print $2}')
    ncorp=$(find "$work" -type f | wc -l)
    if [ $rc -eq 0 ]; then
        line="$name: OK ${secs}s execs=${execs:-?} cov=${cov:-?} corpus=$ncorp"
    else
        crash=$(sed -n 's/.*Test unit written to //p' "$log" | tail -1)
        line="$name: FAILED rc=$rc ${crash:+reproducer=$crash} (log: $log)"
        line+=$'\n'$(grep -m1 -E 'check failed|invariance broken|runtime error|^==[0-9]+==ERROR|SUMMARY|deadly signal' "$log" |
            sed 's/^/    /')
    fi
    printf '%s\n' "$line" >"$out/$name.result"
    echo "$line"
}

# Targets run FUZZ_JOBS at a time (default: one per core): each libFuzzer process is
# single-threaded, and CI's smoke run must fit its 20 minutes.
jobs=${FUZZ_JOBS:-$(nproc)}
for bin in "${targets[@]}"; do
    rm -f "$out/$(basename "$bin").result"
    while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do
        wait -n
    done
    fuzz_one "$bin" &
done
wait

failed=()
summary=()
for bin in "${targets[@]}"; do
    name=$(basename "$bin")
    line=$(cat "$out/$name.result" 2>/dev/null || echo "$name: FAILED (no result)")
    case $(head -1 <<<"$line") in
    "$name: OK "*) ;;
    *) failed+=("$name") ;;
    esac
    summary+=("$(head -1 <<<"$line")")
done

echo "== fuzz summary"
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
    echo "run.sh: failed: ${failed[*]}" >&2
    exit 1
fi
exit 0

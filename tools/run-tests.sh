#!/bin/sh
# Runs each test binary given as an argument, collects Criterion's per-binary
# "Synthesis:" lines and prints one closing "N passed, N failed" line.
# Exits non-zero if any binary fails.
passed=0; failed=0; status=0
for t in "$@"; do
    echo "== $t"
    out=$("$t" --jobs 1 2>&1); rc=$?
    printf '%s\n' "$out" | grep -v '^\[----\] ' | tail -n 40
    line=$(printf '%s\n' "$out" | grep 'Synthesis:' | tail -n 1)
    p=$(printf '%s' "$line" | sed -n 's/.*Passing: \([0-9]*\).*/\1/p')
    f=$(printf '%s' "$line" | sed -n 's/.*Failing: \([0-9]*\).*/\1/p')
    c=$(printf '%s' "$line" | sed -n 's/.*Crashing: \([0-9]*\).*/\1/p')
    passed=$((passed + ${p:-0})); failed=$((failed + ${f:-0} + ${c:-0}))
    if [ $rc -ne 0 ] || [ -z "$line" ]; then status=1; [ -z "$line" ] && failed=$((failed + 1)); fi
done
echo "$passed passed, $failed failed"
exit $status

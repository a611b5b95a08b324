#!/usr/bin/env bash
# The test harness itself: a test process that sees other devices than its
# parent (NVIDIA's OpenCL hides a GPU from the children of a process that
# has listed it) must not run other tests under the parent's numbers; the
# parent then runs the rest itself. TAP output; $1 is a test program.
set -u
prog=$1
. "$(dirname "$0")/tap.sh"
echo "TAP version 13"
echo "1..3"

out=$("$prog" 2>&1); rc=$?
plan=$(echo "$out" | sed -n 's/^1\.\.//p')
oks=$(echo "$out" | grep -c '^ok ')
[ $rc -eq 0 ] && [ -n "$plan" ] && [ "$oks" -eq "$plan" ] && ! echo "$out" | grep -q 'does not see'
check "a plain run: every test in a child, $oks of ${plan:-?} ok" $? "exit $rc" "$out"

out=$(TH_TEST_CHILD_DIFFERS=1 "$prog" 2>&1); rc=$?
echo "$out" | grep -q '^# a test process does not see this one.s devices: the remaining tests run in this one' &&
    echo "$out" | grep -q '^test process: other tests or devices than in the parent'
check "a child that sees other devices says so and the parent takes over" $? "exit $rc" "$out"

oks2=$(echo "$out" | grep -c '^ok ')
[ $rc -eq 0 ] && [ "$oks2" -eq "$plan" ] && ! echo "$out" | grep -q '^not ok'
check "the parent runs every test then: $oks2 of $plan ok, numbered as planned" $? "exit $rc" "$out"

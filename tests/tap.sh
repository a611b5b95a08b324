# TAP helpers for the shell tests (sourced): numbered results, a failure
# count, diagnostics as comments; and the log readers several tests share.
n=0
fails=0
ok() { n=$((n + 1)); echo "ok $n - $1"; }
not_ok() { n=$((n + 1)); fails=$((fails + 1)); echo "not ok $n - $1"; shift; printf '%s\n' "$@" | sed 's/^/# /'; }
skip() { n=$((n + 1)); echo "ok $n - $1 # SKIP $2"; }
check() { # name, status (0 = pass), diagnostics...
    local name=$1 rc=$2
    shift 2
    if [ "$rc" -eq 0 ]; then ok "$name"; else not_ok "$name" "$@"; fi
}
# "step loss" for every step line of a JSON-lines log; the last entry of a
# step wins (a resumed run logs some steps again)
losses() { sed -n 's/^{"step": \([0-9]*\), "loss": \([^,]*\),.*/\1 \2/p' "$1" | awk '{l[$1]=$2} END {for (s in l) print s, l[s]}' | sort -n; }
val_loss() { sed -n 's/.*"val_loss": \([0-9.eE+-]*\)}.*/\1/p' "$1" | tail -1; }
# largest relative difference between the losses of two JSON-lines logs
# over the steps both logged ("none" when they share no step)
maxrel() {
    awk 'NR == FNR {ref[$1] = $2; next} ($1 in ref) {d = ($2 - ref[$1]) / ref[$1]; if (d < 0) d = -d; if (d > m) m = d; k++}
         END {if (k == 0) print "none"; else printf "%.3g\n", m}' <(losses "$2") <(losses "$1")
}
# whether this is the sanitizer build (meson sets TESSERA_TEST_SANITIZE to
# b_sanitize for every test): its host code runs 3 to 5 times slower
sanitized() { [ "${TESSERA_TEST_SANITIZE:-none}" != none ]; }
# within D TOL: D is a number no larger than TOL
within() { [ "$1" != none ] && awk -v a="$1" -v b="$2" 'BEGIN { exit !(a <= b) }'; }

#!/bin/bash
# demo.sh [CKPT] [COUNTER]: checkpoint a running counter, kill it, restore it,
# and check that it went on counting under the same PID with no gap and no
# duplicate.  Run by `make demo`.  Leaves no process behind, even on failure.
set -euo pipefail
ckpt=$(realpath "${1:-target/release/ckpt}")
counter=$(realpath "${2:-target/testdata/counter}")
for f in "$ckpt" "$counter"; do
    [[ -x $f ]] || { echo "demo: $f is missing: run make first" >&2; exit 1; }
done

work=$(mktemp -d "${TMPDIR:-/tmp}/ckpt-demo.XXXXXX")
pid='' rpid=''
cleanup() {
    local status=$?
    for p in $rpid $pid; do kill -KILL "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
    ((status == 0)) || echo "demo: FAILED" >&2
}
trap cleanup EXIT
step() { printf '\n== %s\n' "$*"; }
lines() { if [[ -f $work/out ]]; then wc -l < "$work/out"; else echo 0; fi; }
exited() { # exited PID: the child PID has exited (gone or a zombie)
    [[ ! -e /proc/$1/stat ]] || [[ $(awk '{print $3}' "/proc/$1/stat") == Z ]]
}
wait_lines() { # wait_lines N [PID]: until out has N lines (60 s at most, while PID runs)
    for ((i = 0; i < 600; i++)); do
        (($(lines) >= $1)) && return 0
        if [[ -n ${2:-} ]] && exited "$2"; then
            echo "demo: process $2 exited before $work/out had $1 lines" >&2
            return 1
        fi
        sleep 0.1
    done
    echo "demo: timed out waiting for $1 lines in $work/out" >&2
    return 1
}

step "start the counter: it appends '<n> <pid>' to $work/out every 100 ms"
"$counter" "$work/out" "$work/stop" 100 < /dev/null > /dev/null 2>&1 &
pid=$!
wait_lines 5 "$pid"
tail -n 2 "$work/out"

step "ckpt dump $pid --dir $work/ckpt --kill"
"$ckpt" dump "$pid" --dir "$work/ckpt" --kill
{ wait "$pid" || true; } 2>/dev/null # reap it: restore needs its PID free
before=$(lines)
echo "counter killed after $before numbers"

step "ckpt info $work/ckpt"
"$ckpt" info "$work/ckpt"

step "ckpt restore $work/ckpt (in the background), let it count 10 more"
"$ckpt" restore "$work/ckpt" &
rpid=$!
wait_lines $((before + 10)) "$rpid"
[[ -d /proc/$pid ]] || { echo "demo: PID $pid is not running after the restore" >&2; exit 1; }
tail -n 2 "$work/out"

step "stop it and check the file"
touch "$work/stop"
status=0
wait "$rpid" || status=$?
rpid=''
((status == 0)) || { echo "demo: ckpt restore exited with status $status" >&2; exit 1; }
awk -v pid="$pid" '$1 != NR || $2 != pid { printf "demo: line %d is \"%s\"\n", NR, $0; bad = 1 }
    END { exit bad }' "$work/out"
echo "demo ok: counted 1..$(lines) with no gap and no duplicate, PID $pid before and after the restore"

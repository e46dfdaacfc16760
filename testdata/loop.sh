#!/bin/bash
# loop.sh OUTFILE STOPFILE [DELAY_SECONDS]
# A plain bash loop: appends "<n> <$$> <$BASHPID>" to OUTFILE through a
# descriptor opened once with >> (O_APPEND), every DELAY seconds (default
# 0.05), until STOPFILE exists.  Uses only builtins (no fork): it sleeps with
# `read -t` on stdin, which must be a pipe that nobody writes to.  bash caches
# $$ at start while $BASHPID is getpid() now, so a restore under another PID
# shows as a mismatch.  Prints "ready" after the third line, "done <n>" at the end.
set -u
out=$1 stop=$2 delay=${3:-0.05}
exec 3>>"$out"
n=0
while [[ ! -e $stop ]]; do
    n=$((n + 1))
    echo "$n $$ $BASHPID" >&3
    if ((n == 3)); then echo ready; fi
    read -r -t "$delay" _ || true
done
echo "done $n"

#!/bin/sh
# A job of two redis-servers for tests/servers.rs: a master on PORT and its replica
# on PORT2, which keeps one replication connection to the master (both ends inside
# the job). Nothing is saved to disk; each logs to DIR/<port>.log. Exits once both
# servers have gone (the test shuts them down).
# Usage: redis_replica.sh PORT PORT2 DIR
port=$1 port2=$2 dir=$3
redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
    --daemonize no --repl-diskless-sync-delay 0 --dir "$dir" --logfile "$dir/$port.log" &
redis-server --port "$port2" --bind 127.0.0.1 --save "" --appendonly no \
    --daemonize no --replicaof 127.0.0.1 "$port" --dir "$dir" --logfile "$dir/$port2.log" &
echo started
wait

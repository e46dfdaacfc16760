#!/bin/sh
# A job of two processes for tests/servers.rs: redis-server (in the background,
# its own configuration on the command line, nothing saved to disk) and
# resp_client.py, which holds one connection to it. Exits with the client's status
# once the server has gone too (the test shuts it down).
# Usage: redis_job.sh PORT DIR OUT N GO
port=$1 dir=$2 out=$3 n=$4 go=$5
redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
    --daemonize no --io-threads 2 --dir "$dir" --logfile "$dir/redis.log" &
python3 "$(dirname "$0")/resp_client.py" "$port" "$out" "$n" "$go"
st=$?
wait
exit $st

#!/usr/bin/env python3
# mp_pool.py OUTFILE N
#
# A multiprocessing.Pool of 4 workers (forked: they are children of this
# process) and a multiprocessing.Queue.  The main process submits N tasks one
# at a time (apply_async(square, (i,)).get(); a task sleeps 50 ms and returns
# i*i with the worker's pid and parent pid), passes each result through the
# queue (put, then get), and appends "<i> <i*i>\n" to OUTFILE (truncated at
# the start, line-buffered).  It checks every result (value, the worker is
# one of the pool's 4 and a child of this process, the queue gives back what
# was put).  Prints "ready" after 5 tasks, then "pool ok N workers=<k>" at the
# end (k = how many distinct workers ran tasks) and exits 0; on a failed
# check prints "FAIL: ..." and exits 1.
import multiprocessing
import os
import sys
import time


def square(i):
    time.sleep(0.05)
    return i * i, os.getpid(), os.getppid()


def fail(msg):
    print("FAIL: " + msg, flush=True)
    print("FAIL: " + msg, file=sys.stderr, flush=True)
    sys.exit(1)


def main():
    if len(sys.argv) != 3:
        print("usage: mp_pool.py OUTFILE N", file=sys.stderr)
        sys.exit(2)
    outfile, n = sys.argv[1], int(sys.argv[2])
    ctx = multiprocessing.get_context("fork")
    me = os.getpid()
    open(outfile, "w").close()
    out = open(outfile, "a", buffering=1)
    queue = ctx.Queue()
    used = set()
    with ctx.Pool(4) as pool:
        workers = {p.pid for p in pool._pool}
        if len(workers) != 4:
            fail("the pool has %d workers, expected 4" % len(workers))
        for i in range(n):
            value, wpid, wppid = pool.apply_async(square, (i,)).get()
            if value != i * i:
                fail("task %d returned %r, expected %d" % (i, value, i * i))
            if wpid not in workers or wppid != me:
                fail("task %d ran in pid %d (parent %d), not in a worker of the pool %s "
                     "(children of %d)" % (i, wpid, wppid, sorted(workers), me))
            used.add(wpid)
            queue.put((i, value))
            got = queue.get()
            if got != (i, value):
                fail("the queue gave back %r, expected %r" % (got, (i, value)))
            out.write("%d %d\n" % got)
            if i == 4:
                print("ready", flush=True)
        pool.close()
        pool.join()
    queue.close()
    queue.join_thread()
    out.close()
    print("pool ok %d workers=%d" % (n, len(used)), flush=True)


if __name__ == "__main__":
    main()

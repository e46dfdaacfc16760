/* threads STOPFILE [NTHREADS]
 *
 * NTHREADS (default 8) workers run in lock-step rounds: each round every
 * worker increments its __thread counter, then meets the others at a barrier
 * built from one shared mutex and one condition variable; the last to arrive
 * starts the next round (and checks STOPFILE, so all stop after the same
 * round).  Between rounds each worker sleeps 5 ms.  Every round each worker
 * checks that
 *   - syscall(SYS_gettid) still equals the TID it recorded at start, and the
 *     TID glibc caches in the thread descriptor (read back from the owner
 *     field that pthread_mutex_lock stores in the mutex) equals it too;
 *   - its __thread counter equals the round number (TLS intact);
 *   - sched_getcpu() returns a valid CPU (not -1), and the thread's rseq area
 *     is still registered with the kernel (glibc uses it for sched_getcpu);
 *   - its name (pthread_setname_np) is unchanged.
 * Prints "tid <i> <tid>" per worker, "ready" after 3 rounds, "round <n>" every
 * 20 rounds; on STOPFILE: "threads ok rounds=<n> ..." and exit 0, or
 * "FAIL: ..." and exit 1.
 */
#include "common.h"
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#if __has_include(<sys/rseq.h>)
#include <sys/rseq.h>
#define HAVE_GLIBC_RSEQ 1
#endif

#define MAXT 64

static const char *stopfile;
static int nthreads;
static pthread_mutex_t mtx = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static long round_no;  /* completed rounds */
static int arrived;
static int stopping;
static long total;     /* sum of all increments, under mtx */
static int start_tid[MAXT];
static long final_tls[MAXT];
static atomic_int started;
static long ncpus;

static __thread long tls_counter;

/* 0 if this thread's rseq area is still registered with the kernel */
static int rseq_check(void)
{
#ifdef HAVE_GLIBC_RSEQ
    if (__rseq_size == 0)
        return 0; /* glibc did not register rseq (tunable): nothing to keep */
    void *area = (char *)__builtin_thread_pointer() + __rseq_offset;
    unsigned int len = __rseq_size < 32 ? 32 : __rseq_size;
    long r = syscall(SYS_rseq, area, len, 0, 0x53053053 /* RSEQ_SIG x86 */);
    if (r == 0)
        return -1; /* it was not registered: we just registered it */
    /* EBUSY: registered (same area); EINVAL/EPERM: registered differently */
    return 0;
#else
    return 0;
#endif
}

static void *worker(void *arg)
{
    int id = (int)(long)arg;
    int tid = (int)syscall(SYS_gettid);
    char name[16], want_name[16];
    snprintf(want_name, sizeof want_name, "worker-%d", id);
    CHECK(pthread_setname_np(pthread_self(), want_name) == 0, "setname");
    start_tid[id] = tid;
    say("tid %d %d", id, tid);
    atomic_fetch_add(&started, 1);

    for (long my_round = 0;; my_round++) {
        tls_counter++;
        CHECK(tls_counter == my_round + 1, "worker %d: TLS counter %ld in round %ld",
              id, tls_counter, my_round);
        int now_tid = (int)syscall(SYS_gettid);
        CHECK(now_tid == tid, "worker %d: gettid %d, was %d", id, now_tid, tid);
        int cpu = sched_getcpu();
        CHECK(cpu >= 0 && cpu < ncpus, "worker %d: sched_getcpu() = %d (%s)", id, cpu,
              cpu < 0 ? strerror(errno) : "out of range");
        CHECK(rseq_check() == 0, "worker %d (tid %d): rseq area not registered", id, tid);
        CHECK(prctl(PR_GET_NAME, name) == 0 && !strcmp(name, want_name),
              "worker %d: name '%s', expected '%s'", id, name, want_name);

        pthread_mutex_lock(&mtx);
        /* glibc stores its cached TID (THREAD_SELF->tid) as the owner */
        CHECK(mtx.__data.__owner == tid, "worker %d: glibc cached tid %d, kernel tid %d",
              id, mtx.__data.__owner, tid);
        total++;
        CHECK(round_no == my_round, "worker %d: in round %ld, barrier at %ld", id,
              my_round, round_no);
        if (++arrived == nthreads) {
            arrived = 0;
            CHECK(total == (round_no + 1) * nthreads, "total %ld after round %ld", total,
                  round_no);
            round_no++;
            if (file_exists(stopfile))
                stopping = 1;
            pthread_cond_broadcast(&cv);
        } else {
            while (round_no == my_round)
                pthread_cond_wait(&cv, &mtx);
        }
        int stop = stopping;
        long r = round_no;
        pthread_mutex_unlock(&mtx);
        if (stop)
            break;
        if (id == 0) {
            if (r == 3)
                say("ready");
            else if (r % 20 == 0)
                say("round %ld", r);
        }
        sleep_ms(5);
    }
    final_tls[id] = tls_counter;
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s STOPFILE [NTHREADS]\n", argv[0]);
        return 2;
    }
    stopfile = argv[1];
    nthreads = (int)arg_long(argc, argv, 2, 8);
    CHECK(nthreads >= 1 && nthreads <= MAXT, "1..%d threads", MAXT);
    ncpus = sysconf(_SC_NPROCESSORS_CONF);
    CHECK(ncpus > 0, "sysconf");

    pthread_t th[MAXT];
    for (int i = 0; i < nthreads; i++)
        CHECK(pthread_create(&th[i], NULL, worker, (void *)(long)i) == 0, "pthread_create");
    for (int i = 0; i < nthreads; i++)
        CHECK(pthread_join(th[i], NULL) == 0, "pthread_join");

    for (int i = 0; i < nthreads; i++)
        CHECK(final_tls[i] == round_no, "worker %d did %ld rounds, not %ld", i,
              final_tls[i], round_no);
    CHECK(total == round_no * nthreads, "total %ld != %ld * %d", total, round_no, nthreads);
    say("threads ok rounds=%ld threads=%d total=%ld", round_no, nthreads, total);
    return 0;
}

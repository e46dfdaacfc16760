/* Scheduling attributes survive a checkpoint: nice, policy and priority, CPU
 * affinity, I/O priority and timer slack per thread, and oom_score_adj.
 *
 * usage: sched STOPFILE [rt]
 *
 * The main thread takes nice 5, SCHED_BATCH, CPU 0 only, I/O class idle, a timer
 * slack of 123456 ns; a worker takes nice 3, SCHED_IDLE (or SCHED_FIFO priority 7
 * with `rt`, which needs CAP_SYS_NICE), the last CPU only, I/O best-effort level 6,
 * a slack of 777000 ns; the process takes oom_score_adj 321. Prints "tids MAIN
 * WORKER" and "ready", waits for STOPFILE, then each thread checks its own
 * attributes ("sched ok" or "FAIL: ..."). */
#include "common.h"
#include <pthread.h>
#include <sched.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>

#define IOPRIO_WHO_PROCESS 1
#define IOPRIO_VALUE(class, data) (((class) << 13) | (data))

struct want {
    int nice, policy, prio, cpu, ioprio;
    unsigned long slack;
};

static const char *stopfile;
static struct want main_want, worker_want;
static int ncpu;

static void apply(struct want *w)
{
    pid_t tid = gettid();
    CHECK(setpriority(PRIO_PROCESS, tid, w->nice) == 0, "setpriority: %s", strerror(errno));
    struct sched_param sp = { .sched_priority = w->prio };
    CHECK(sched_setscheduler(tid, w->policy, &sp) == 0, "sched_setscheduler %d: %s",
          w->policy, strerror(errno));
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(w->cpu, &set);
    CHECK(sched_setaffinity(tid, sizeof set, &set) == 0, "sched_setaffinity: %s",
          strerror(errno));
    CHECK(syscall(SYS_ioprio_set, IOPRIO_WHO_PROCESS, tid, w->ioprio) == 0, "ioprio_set: %s",
          strerror(errno));
    CHECK(prctl(PR_SET_TIMERSLACK, w->slack, 0, 0, 0) == 0, "PR_SET_TIMERSLACK: %s",
          strerror(errno));
    /* Linux 6.7+ keeps no slack for real-time threads: what it kept is the state. */
    w->slack = (unsigned long)prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0);
}

static void verify(const char *who, const struct want *w)
{
    pid_t tid = gettid();
    errno = 0;
    int nice = getpriority(PRIO_PROCESS, tid);
    CHECK(nice == w->nice, "%s: nice %d, want %d", who, nice, w->nice);
    int policy = sched_getscheduler(tid);
    CHECK(policy == w->policy, "%s: policy %d, want %d", who, policy, w->policy);
    struct sched_param sp;
    CHECK(sched_getparam(tid, &sp) == 0 && sp.sched_priority == w->prio,
          "%s: priority %d, want %d", who, sp.sched_priority, w->prio);
    cpu_set_t set;
    CHECK(sched_getaffinity(tid, sizeof set, &set) == 0, "sched_getaffinity");
    CHECK(CPU_COUNT(&set) == 1 && CPU_ISSET(w->cpu, &set), "%s: affinity %d CPUs, want CPU %d",
          who, CPU_COUNT(&set), w->cpu);
    long io = syscall(SYS_ioprio_get, IOPRIO_WHO_PROCESS, tid);
    CHECK(io == w->ioprio, "%s: ioprio %#lx, want %#x", who, io, w->ioprio);
    long slack = prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0);
    CHECK((unsigned long)slack == w->slack, "%s: timer slack %ld, want %lu", who, slack,
          w->slack);
}

static void wait_stop(void)
{
    while (access(stopfile, F_OK) != 0)
        sleep_ms(20);
}

static pthread_barrier_t ready;

static void *worker(void *arg)
{
    (void)arg;
    apply(&worker_want);
    say("worker %d", (int)gettid());
    pthread_barrier_wait(&ready);
    wait_stop();
    verify("worker", &worker_want);
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s STOPFILE [rt]\n", argv[0]);
        return 2;
    }
    stopfile = argv[1];
    int rt = argc > 2 && strcmp(argv[2], "rt") == 0;
    ncpu = (int)sysconf(_SC_NPROCESSORS_ONLN);
    main_want = (struct want){ 5, SCHED_BATCH, 0, 0, IOPRIO_VALUE(3, 0), 123456 };
    worker_want = (struct want){ 3, rt ? SCHED_FIFO : SCHED_IDLE, rt ? 7 : 0, ncpu - 1,
                                 IOPRIO_VALUE(2, 6), 777000 };
    FILE *oom = fopen("/proc/self/oom_score_adj", "w");
    CHECK(oom && fprintf(oom, "321\n") > 0 && fclose(oom) == 0, "oom_score_adj: %s",
          strerror(errno));
    pthread_barrier_init(&ready, NULL, 2);
    pthread_t th;
    CHECK(pthread_create(&th, NULL, worker, NULL) == 0, "pthread_create");
    apply(&main_want);
    pthread_barrier_wait(&ready);
    say("ready");
    wait_stop();
    verify("main", &main_want);
    pthread_join(th, NULL);
    char buf[32] = "";
    oom = fopen("/proc/self/oom_score_adj", "r");
    CHECK(oom && fgets(buf, sizeof buf, oom), "reading oom_score_adj");
    CHECK(atoi(buf) == 321, "oom_score_adj %d, want 321", atoi(buf));
    say("sched ok");
    return 0;
}

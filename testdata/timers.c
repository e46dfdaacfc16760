/* timers STOPFILE [--foreign-clock | --pending-alarm]
 *
 * Keeps interval timers and POSIX timers running across a checkpoint:
 *   - ITIMER_REAL every 20 ms (SIGALRM counted),
 *   - ITIMER_PROF every 10 ms of CPU time (SIGPROF counted; the main loop spins
 *     about 2 ms of every 10 ms),
 *   - ITIMER_VIRTUAL at 1000 s with a 777 s interval (never fires; checked),
 *   - POSIX timer A: CLOCK_MONOTONIC, SIGEV_SIGNAL SIGRTMIN+2, sival_ptr = &a_cookie,
 *     every 30 ms,
 *   - POSIX timer B: CLOCK_BOOTTIME, SIGEV_THREAD_ID to a worker thread,
 *     SIGRTMIN+3, sival_int 0xB0B, every 40 ms,
 *   - POSIX timer C: CLOCK_REALTIME, SIGEV_NONE, 1000 s then every 500 s (checked),
 *   - POSIX timer D: CLOCK_MONOTONIC, SIGEV_SIGNAL SIGRTMIN+4, created disarmed;
 * two timers are created before A and deleted, so the ids have a gap.  The
 * handlers check si_code (SI_TIMER), si_value and si_timerid (and, for B, the
 * receiving thread) of every signal.
 *
 * Prints "ids A B C D" and "ready" once every timer has fired a few times, then
 * "tick alrm=.. prof=.. a=.. b=.." every 200 ms until STOPFILE exists.  Then,
 * with the timer ids it saved at the start: timer_gettime of each (settings as
 * expected, D disarmed), /proc/self/timers lists exactly those ids, every count
 * goes on increasing, timer_settime works (A faster, D armed once: its signal
 * must come), no signal had a wrong siginfo.  Prints "timers ok ..." and exits
 * 0, or "FAIL: ..." and exits 1.
 *
 * With --foreign-clock it only creates a timer on its parent's CPU clock (which
 * a checkpoint must refuse), prints "ready" and waits for STOPFILE.
 *
 * With --pending-alarm it only arms ITIMER_REAL every 20 ms with SIGALRM
 * blocked: the first SIGALRM stays pending and the timer is not running (the
 * kernel re-arms it when the signal is dequeued).  Prints "ready", waits for
 * STOPFILE, checks that getitimer still shows that state, unblocks SIGALRM and
 * prints "pending alarm ok alarms=N" if the timer then keeps firing.
 */
#include "common.h"
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <sys/time.h>

static volatile sig_atomic_t alrm, prof, a_count, b_count, d_count, bad;
static volatile sig_atomic_t stop_worker;
static char bad_what[128];
static int a_cookie;
static timer_t ta, tb, tc, td;
static volatile pid_t worker_tid;

#define B_VALUE 0xB0B

static void note_bad(const char *what)
{
    if (!bad)
        snprintf(bad_what, sizeof bad_what, "%s", what);
    bad++;
}

static void on_alrm(int sig) { (void)sig; alrm++; }
static void on_prof(int sig) { (void)sig; prof++; }

static void on_timer(int sig, siginfo_t *si, void *uc)
{
    (void)uc;
    if (si->si_code != SI_TIMER) {
        note_bad("si_code is not SI_TIMER");
        return;
    }
    if (sig == SIGRTMIN + 2) {
        if (si->si_value.sival_ptr != &a_cookie)
            note_bad("timer A: wrong si_value");
        else if (si->si_timerid != (int)(intptr_t)ta)
            note_bad("timer A: wrong si_timerid");
        a_count++;
    } else if (sig == SIGRTMIN + 3) {
        if (si->si_value.sival_int != B_VALUE)
            note_bad("timer B: wrong si_value");
        else if (si->si_timerid != (int)(intptr_t)tb)
            note_bad("timer B: wrong si_timerid");
        else if ((pid_t)syscall(SYS_gettid) != worker_tid)
            note_bad("timer B: signal delivered to the wrong thread");
        b_count++;
    } else if (sig == SIGRTMIN + 4) {
        if (si->si_timerid != (int)(intptr_t)td)
            note_bad("timer D: wrong si_timerid");
        d_count++;
    }
}

static void *worker(void *arg)
{
    (void)arg;
    worker_tid = (pid_t)syscall(SYS_gettid);
    while (!stop_worker)
        sleep_ms(20);
    return NULL;
}

static void handle(int sig, void (*fn)(int))
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = fn;
    sa.sa_flags = SA_RESTART;
    CHECK(sigaction(sig, &sa, NULL) == 0, "sigaction %d", sig);
}

static void handle_info(int sig)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_timer;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    CHECK(sigaction(sig, &sa, NULL) == 0, "sigaction %d", sig);
}

static timer_t make_timer(clockid_t clock, int notify, int sig, union sigval v, pid_t tid)
{
    struct sigevent ev;
    memset(&ev, 0, sizeof ev);
    ev.sigev_notify = notify;
    ev.sigev_signo = sig;
    ev.sigev_value = v;
    if (notify == SIGEV_THREAD_ID)
        ev._sigev_un._tid = tid;
    timer_t t;
    CHECK(timer_create(clock, &ev, &t) == 0, "timer_create: %s", strerror(errno));
    return t;
}

static void arm(timer_t t, long value_ms, long interval_ms)
{
    struct itimerspec its = {
        .it_interval = { interval_ms / 1000, (interval_ms % 1000) * 1000000L },
        .it_value = { value_ms / 1000, (value_ms % 1000) * 1000000L },
    };
    CHECK(timer_settime(t, 0, &its, NULL) == 0, "timer_settime: %s", strerror(errno));
}

static long long ns_of(struct timespec ts) { return ts.tv_sec * 1000000000LL + ts.tv_nsec; }

/* Spin for about `ms` of this thread's CPU time (so ITIMER_PROF advances). */
static void spin_ms(long ms)
{
    struct timespec a, b;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &a);
    do
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &b);
    while (ns_of(b) - ns_of(a) < ms * 1000000L);
}

/* One step of the main loop: some CPU time, some sleep. */
static void step(void)
{
    spin_ms(2);
    sleep_ms(8);
}

static int id_of(timer_t t) { return (int)(intptr_t)t; }

/* The ids /proc/self/timers lists, sorted, into ids[]; returns how many. */
static int proc_timer_ids(int *ids, int max)
{
    FILE *f = fopen("/proc/self/timers", "r");
    CHECK(f, "open /proc/self/timers: %s", strerror(errno));
    char line[256];
    int n = 0;
    while (fgets(line, sizeof line, f)) {
        int id;
        if (sscanf(line, "ID: %d", &id) == 1 && n < max)
            ids[n++] = id;
    }
    fclose(f);
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && ids[j - 1] > ids[j]; j--) {
            int x = ids[j];
            ids[j] = ids[j - 1];
            ids[j - 1] = x;
        }
    return n;
}

/* Loop until every count passed its target (or fail after 30 s). */
static void wait_counts(int alrm_n, int prof_n, int a_n, int b_n, int d_n, const char *what)
{
    double deadline = now_mono() + 30;
    while (alrm < alrm_n || prof < prof_n || a_count < a_n || b_count < b_n || d_count < d_n) {
        if (now_mono() > deadline)
            fail("%s: counts stopped: alrm=%d/%d prof=%d/%d a=%d/%d b=%d/%d d=%d/%d", what,
                 (int)alrm, alrm_n, (int)prof, prof_n, (int)a_count, a_n, (int)b_count, b_n,
                 (int)d_count, d_n);
        step();
    }
}

static void expect_setting(timer_t t, const char *name, long long interval_ns, long long min_ns,
                           long long max_ns)
{
    struct itimerspec its;
    CHECK(timer_gettime(t, &its) == 0, "timer_gettime(%s = id %d): %s", name, id_of(t),
          strerror(errno));
    long long iv = ns_of(its.it_interval), v = ns_of(its.it_value);
    CHECK(iv == interval_ns, "timer %s: interval %lld ns, expected %lld", name, iv, interval_ns);
    CHECK(v >= min_ns && v <= max_ns, "timer %s: value %lld ns, expected %lld..%lld", name, v,
          min_ns, max_ns);
}

int main(int argc, char **argv)
{
    CHECK(argc >= 2, "usage: timers STOPFILE [--foreign-clock]");
    const char *stop = argv[1];

    if (argc > 2 && !strcmp(argv[2], "--pending-alarm")) {
        handle(SIGALRM, on_alrm);
        sigset_t set;
        sigemptyset(&set);
        sigaddset(&set, SIGALRM);
        CHECK(sigprocmask(SIG_BLOCK, &set, NULL) == 0, "sigprocmask");
        struct itimerval real = { { 0, 20000 }, { 0, 20000 } };
        CHECK(setitimer(ITIMER_REAL, &real, NULL) == 0, "setitimer REAL");
        sleep_ms(100);
        say("ready");
        wait_for_file(stop, 10);
        struct itimerval v;
        CHECK(getitimer(ITIMER_REAL, &v) == 0, "getitimer REAL");
        CHECK(v.it_value.tv_sec == 0 && v.it_value.tv_usec == 0 && v.it_interval.tv_sec == 0 &&
                  v.it_interval.tv_usec == 20000,
              "ITIMER_REAL with its SIGALRM pending: value %ld.%06ld interval %ld.%06ld, "
              "expected 0 and 0.020000",
              (long)v.it_value.tv_sec, (long)v.it_value.tv_usec, (long)v.it_interval.tv_sec,
              (long)v.it_interval.tv_usec);
        CHECK(sigprocmask(SIG_UNBLOCK, &set, NULL) == 0, "sigprocmask");
        double deadline = now_mono() + 30;
        while (alrm < 5) {
            CHECK(now_mono() < deadline, "ITIMER_REAL stopped after its pending SIGALRM: %d alarms",
                  (int)alrm);
            sleep_ms(10);
        }
        say("pending alarm ok alarms=%d", (int)alrm);
        return 0;
    }
    if (argc > 2 && !strcmp(argv[2], "--foreign-clock")) {
        clockid_t clock;
        CHECK(clock_getcpuclockid(getppid(), &clock) == 0, "clock_getcpuclockid");
        make_timer(clock, SIGEV_NONE, 0, (union sigval){ .sival_int = 0 }, 0);
        say("ready");
        wait_for_file(stop, 10);
        say("done");
        return 0;
    }

    handle(SIGALRM, on_alrm);
    handle(SIGPROF, on_prof);
    handle_info(SIGRTMIN + 2);
    handle_info(SIGRTMIN + 3);
    handle_info(SIGRTMIN + 4);

    pthread_t w;
    CHECK(pthread_create(&w, NULL, worker, NULL) == 0, "pthread_create");
    while (!worker_tid)
        sleep_ms(1);

    struct itimerval real = { { 0, 20000 }, { 0, 20000 } };
    struct itimerval prf = { { 0, 10000 }, { 0, 10000 } };
    struct itimerval virt = { { 777, 0 }, { 1000, 0 } };
    CHECK(setitimer(ITIMER_REAL, &real, NULL) == 0, "setitimer REAL");
    CHECK(setitimer(ITIMER_PROF, &prf, NULL) == 0, "setitimer PROF");
    CHECK(setitimer(ITIMER_VIRTUAL, &virt, NULL) == 0, "setitimer VIRTUAL");

    union sigval none = { .sival_int = 0 };
    timer_t gap1 = make_timer(CLOCK_MONOTONIC, SIGEV_NONE, 0, none, 0);
    timer_t gap2 = make_timer(CLOCK_MONOTONIC, SIGEV_NONE, 0, none, 0);
    ta = make_timer(CLOCK_MONOTONIC, SIGEV_SIGNAL, SIGRTMIN + 2,
                    (union sigval){ .sival_ptr = &a_cookie }, 0);
    CHECK(timer_delete(gap1) == 0 && timer_delete(gap2) == 0, "timer_delete");
    tb = make_timer(CLOCK_BOOTTIME, SIGEV_THREAD_ID, SIGRTMIN + 3,
                    (union sigval){ .sival_int = B_VALUE }, worker_tid);
    tc = make_timer(CLOCK_REALTIME, SIGEV_NONE, 0, none, 0);
    td = make_timer(CLOCK_MONOTONIC, SIGEV_SIGNAL, SIGRTMIN + 4, none, 0);
    arm(ta, 30, 30);
    arm(tb, 40, 40);
    arm(tc, 1000 * 1000, 500 * 1000);
    say("ids %d %d %d %d", id_of(ta), id_of(tb), id_of(tc), id_of(td));

    wait_counts(3, 2, 3, 3, 0, "before ready");
    say("ready");

    double next_tick = now_mono();
    while (!file_exists(stop)) {
        if (now_mono() >= next_tick) {
            say("tick alrm=%d prof=%d a=%d b=%d", (int)alrm, (int)prof, (int)a_count,
                (int)b_count);
            next_tick = now_mono() + 0.2;
        }
        step();
    }

    /* The settings, read with the ids from before the checkpoint. */
    struct itimerval v;
    CHECK(getitimer(ITIMER_VIRTUAL, &v) == 0, "getitimer VIRTUAL");
    CHECK(v.it_interval.tv_sec == 777 && v.it_interval.tv_usec == 0,
          "ITIMER_VIRTUAL interval is %ld.%06ld s, expected 777 s", (long)v.it_interval.tv_sec,
          (long)v.it_interval.tv_usec);
    CHECK(v.it_value.tv_sec >= 900 && v.it_value.tv_sec <= 1000,
          "ITIMER_VIRTUAL value is %ld s, expected 900..1000", (long)v.it_value.tv_sec);
    CHECK(getitimer(ITIMER_REAL, &v) == 0 && v.it_interval.tv_usec == 20000,
          "ITIMER_REAL interval is %ld us, expected 20000", (long)v.it_interval.tv_usec);
    CHECK(getitimer(ITIMER_PROF, &v) == 0 && v.it_interval.tv_usec == 10000,
          "ITIMER_PROF interval is %ld us, expected 10000", (long)v.it_interval.tv_usec);
    expect_setting(ta, "A", 30000000LL, 1, 30000000LL);
    expect_setting(tb, "B", 40000000LL, 1, 40000000LL);
    expect_setting(tc, "C", 500000000000LL, 800000000000LL, 1000000000000LL);
    expect_setting(td, "D", 0, 0, 0);

    int ids[16];
    int n = proc_timer_ids(ids, 16);
    CHECK(n == 4 && ids[0] == id_of(ta) && ids[1] == id_of(tb) && ids[2] == id_of(tc) &&
              ids[3] == id_of(td),
          "/proc/self/timers lists %d timers (first ids %d %d %d %d), expected ids %d %d %d %d",
          n, n > 0 ? ids[0] : -1, n > 1 ? ids[1] : -1, n > 2 ? ids[2] : -1, n > 3 ? ids[3] : -1,
          id_of(ta), id_of(tb), id_of(tc), id_of(td));

    /* Every timer keeps firing. */
    wait_counts(alrm + 3, prof + 2, a_count + 3, b_count + 3, 0, "after stop");

    /* timer_settime works on the old ids: A faster, D armed once. */
    arm(ta, 10, 10);
    expect_setting(ta, "A (re-armed)", 10000000LL, 1, 10000000LL);
    arm(td, 20, 0);
    wait_counts(0, 0, a_count + 5, 0, 1, "after timer_settime");

    CHECK(!bad, "%d signals with a wrong siginfo, first: %s", (int)bad, bad_what);
    stop_worker = 1;
    pthread_join(w, NULL);
    say("timers ok alrm=%d prof=%d a=%d b=%d d=%d ids=%d,%d,%d,%d", (int)alrm, (int)prof,
        (int)a_count, (int)b_count, (int)d_count, id_of(ta), id_of(tb), id_of(tc), id_of(td));
    return 0;
}

/* signals [--extras]
 *
 * Installs SA_SIGINFO handlers for SIGUSR1 and SIGUSR2 at start, prints
 * "ready", then sleeps in 10 ms steps, printing "alive <n>" every 200 ms (so a
 * test knows the program's own code runs again after a restore).  Whenever a handler has run it prints
 * "USR1 count=<n> pid=<sender> code=<si_code>" (or USR2), after checking that
 * the handlers are still installed.  It exits 0 after the first SIGUSR2,
 * printing "signals done usr1=<n> usr2=<n>".
 *
 * With --extras it also keeps, across the checkpoint:
 *   - SIGHUP ignored (the test sends one after the restore: it must not kill);
 *   - an alternate signal stack, on which the SIGUSR2 handler must run;
 *   - SIGRTMIN+1 blocked, with one queued instance carrying the value 4242,
 *     which is unblocked before exit and must then be delivered with that
 *     value and si_code SI_QUEUE.
 * and prints "extras ok ..." before "signals done".
 */
#include "common.h"
#include <signal.h>
#include <stdint.h>

static volatile sig_atomic_t usr1, usr2, rt_count, rt_value, usr2_on_altstack;
static volatile sig_atomic_t last_pid, last_code;
static char *alt_base;
static const size_t alt_size = 64 * 1024;

static void on_usr(int sig, siginfo_t *si, void *uc)
{
    (void)uc;
    last_pid = si->si_pid;
    last_code = si->si_code;
    if (sig == SIGUSR1) {
        usr1++;
    } else {
        char here;
        usr2_on_altstack = alt_base && &here >= alt_base && &here < alt_base + alt_size;
        usr2++;
    }
}

static void on_rt(int sig, siginfo_t *si, void *uc)
{
    (void)sig, (void)uc;
    rt_value = si->si_value.sival_int;
    rt_count = si->si_code == SI_QUEUE ? rt_count + 1 : -1000;
}

static void check_handler(int sig, void (*fn)(int, siginfo_t *, void *))
{
    struct sigaction sa;
    CHECK(sigaction(sig, NULL, &sa) == 0, "sigaction query");
    CHECK((sa.sa_flags & SA_SIGINFO) && sa.sa_sigaction == fn,
          "handler of signal %d changed (flags %#x)", sig, sa.sa_flags);
}

int main(int argc, char **argv)
{
    int extras = argc > 1 && !strcmp(argv[1], "--extras");
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_usr;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    CHECK(sigaction(SIGUSR1, &sa, NULL) == 0, "sigaction USR1");
    if (extras) {
        alt_base = malloc(alt_size);
        stack_t ss = { .ss_sp = alt_base, .ss_size = alt_size, .ss_flags = 0 };
        CHECK(alt_base && sigaltstack(&ss, NULL) == 0, "sigaltstack");
        sa.sa_flags |= SA_ONSTACK;
    }
    CHECK(sigaction(SIGUSR2, &sa, NULL) == 0, "sigaction USR2");

    int rt = SIGRTMIN + 1;
    if (extras) {
        CHECK(signal(SIGHUP, SIG_IGN) != SIG_ERR, "ignore SIGHUP");
        struct sigaction rs;
        memset(&rs, 0, sizeof rs);
        rs.sa_sigaction = on_rt;
        rs.sa_flags = SA_SIGINFO;
        CHECK(sigaction(rt, &rs, NULL) == 0, "sigaction RT");
        sigset_t set;
        sigemptyset(&set);
        sigaddset(&set, rt);
        CHECK(sigprocmask(SIG_BLOCK, &set, NULL) == 0, "block RT");
        union sigval v = { .sival_int = 4242 };
        CHECK(sigqueue(getpid(), rt, v) == 0, "sigqueue");
    }

    say("ready");
    int seen1 = 0, seen2 = 0;
    for (long n = 1;; n++) {
        sleep_ms(10);
        if (n % 20 == 0)
            say("alive %ld", n / 20);
        if (usr1 != seen1 || usr2 != seen2) {
            check_handler(SIGUSR1, on_usr);
            check_handler(SIGUSR2, on_usr);
        }
        if (usr1 != seen1) {
            seen1 = usr1;
            say("USR1 count=%d pid=%d code=%d", seen1, (int)last_pid, (int)last_code);
        }
        if (usr2 != seen2) {
            seen2 = usr2;
            say("USR2 count=%d pid=%d code=%d", seen2, (int)last_pid, (int)last_code);
            break;
        }
    }

    if (extras) {
        CHECK(usr2_on_altstack, "the SIGUSR2 handler did not run on the alternate stack");
        stack_t ss;
        CHECK(sigaltstack(NULL, &ss) == 0 && ss.ss_sp == alt_base && ss.ss_size == alt_size,
              "alternate stack changed: %p+%zu", ss.ss_sp, ss.ss_size);
        struct sigaction hup;
        CHECK(sigaction(SIGHUP, NULL, &hup) == 0 && hup.sa_handler == SIG_IGN,
              "SIGHUP is no longer ignored");
        sigset_t cur, pend;
        CHECK(sigprocmask(SIG_BLOCK, NULL, &cur) == 0 && sigismember(&cur, rt),
              "SIGRTMIN+1 is no longer blocked");
        CHECK(sigpending(&pend) == 0 && sigismember(&pend, rt),
              "the queued SIGRTMIN+1 is no longer pending");
        CHECK(rt_count == 0, "SIGRTMIN+1 delivered while blocked");
        sigset_t set;
        sigemptyset(&set);
        sigaddset(&set, rt);
        CHECK(sigprocmask(SIG_UNBLOCK, &set, NULL) == 0, "unblock RT");
        CHECK(rt_count == 1 && rt_value == 4242,
              "SIGRTMIN+1: delivered %d times (code SI_QUEUE expected), value %d, expected 4242",
              (int)rt_count, (int)rt_value);
        say("extras ok altstack=1 hup_ignored=1 pending_rt_value=%d", (int)rt_value);
    }
    say("signals done usr1=%d usr2=%d", seen1, seen2);
    return 0;
}

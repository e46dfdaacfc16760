/* Zombies keep their process groups and sessions across a checkpoint.
 *
 * usage: zombies STOPFILE
 *
 * Forks three children that exit at once and stay unreaped: one leading a
 * process group of its own (setpgid), one leading a session (setsid), one in the
 * parent's group. Prints "zombies A B C" and "ready", waits for STOPFILE, then
 * checks each zombie's group and session in /proc/PID/stat, reaps them with
 * their exit codes 10, 11, 12 and prints "zombies ok" (or "FAIL: ..."). */
#include "common.h"
#include <sys/wait.h>

static void ids(pid_t pid, int *pgrp, int *sid)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    CHECK(f && fgets(buf, sizeof buf, f), "reading %s", path);
    fclose(f);
    char *p = strrchr(buf, ')');
    char state;
    int ppid;
    CHECK(p && sscanf(p + 2, "%c %d %d %d", &state, &ppid, pgrp, sid) == 4, "parsing %s", path);
    CHECK(state == 'Z', "%d is not a zombie (%c)", (int)pid, state);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s STOPFILE\n", argv[0]);
        return 2;
    }
    pid_t kids[3];
    for (int i = 0; i < 3; i++) {
        kids[i] = fork();
        CHECK(kids[i] >= 0, "fork");
        if (kids[i] == 0) {
            if (i == 0)
                setpgid(0, 0);
            if (i == 1)
                setsid();
            _exit(10 + i);
        }
    }
    /* Wait until all three are zombies, without reaping them. */
    for (int i = 0; i < 3; i++) {
        siginfo_t si;
        CHECK(waitid(P_PID, kids[i], &si, WEXITED | WNOWAIT) == 0, "waitid");
    }
    int pg[3], sid[3];
    for (int i = 0; i < 3; i++)
        ids(kids[i], &pg[i], &sid[i]);
    CHECK(pg[0] == kids[0] && sid[1] == kids[1] && pg[2] == getpgid(0), "setup");
    say("zombies %d %d %d", (int)kids[0], (int)kids[1], (int)kids[2]);
    say("ready");
    while (access(argv[1], F_OK) != 0)
        sleep_ms(20);
    for (int i = 0; i < 3; i++) {
        int p, s;
        ids(kids[i], &p, &s);
        int want_p = i == 0 ? kids[0] : i == 1 ? kids[1] : getpgid(0);
        int want_s = i == 1 ? kids[1] : getsid(0);
        CHECK(p == want_p && s == want_s, "zombie %d: group %d session %d, want %d %d",
              (int)kids[i], p, s, want_p, want_s);
        int st;
        CHECK(waitpid(kids[i], &st, 0) == kids[i] && WIFEXITED(st) && WEXITSTATUS(st) == 10 + i,
              "zombie %d status %#x", (int)kids[i], st);
    }
    say("zombies ok");
    return 0;
}

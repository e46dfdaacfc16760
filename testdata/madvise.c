/* madvise state and memory locks survive a checkpoint.
 *
 * usage: madvise STOPFILE
 *
 * Maps one anonymous region per advice (MADV_DONTFORK, MADV_WIPEONFORK,
 * MADV_DONTDUMP, MADV_HUGEPAGE, MADV_NOHUGEPAGE, MADV_RANDOM, MADV_SEQUENTIAL),
 * one locked with mlock and one with mlock2(MLOCK_ONFAULT), fills them, prints
 * "ready", waits for STOPFILE, then checks from its own /proc/self/smaps that
 * every region still has its VmFlags letter and its content, and that a forked
 * child sees the WIPEONFORK region zeroed and lacks the DONTFORK region
 * ("madvise ok" or "FAIL: ..."). */
#include "common.h"
#include <sys/mman.h>
#include <sys/wait.h>

#ifndef MLOCK_ONFAULT
#define MLOCK_ONFAULT 1
#endif

#define LEN (2 * 1024 * 1024)

struct region {
    const char *flag;
    int advice; /* -1: mlock, -2: mlock onfault */
    char *p;
};

static struct region regions[] = {
    { "dc", MADV_DONTFORK, 0 },   { "wf", MADV_WIPEONFORK, 0 },
    { "dd", MADV_DONTDUMP, 0 },   { "hg", MADV_HUGEPAGE, 0 },
    { "nh", MADV_NOHUGEPAGE, 0 }, { "rr", MADV_RANDOM, 0 },
    { "sr", MADV_SEQUENTIAL, 0 }, { "lo", -1, 0 },
    { "lf", -2, 0 },
};
#define N (int)(sizeof regions / sizeof regions[0])

/* The VmFlags line of the region that starts at p, in /proc/self/smaps. */
static int has_flag(char *p, const char *flag)
{
    FILE *f = fopen("/proc/self/smaps", "r");
    CHECK(f, "smaps");
    char line[512];
    int in = 0, found = -1;
    unsigned long start, end;
    while (fgets(line, sizeof line, f)) {
        /* Region lines start with a lowercase hex address, field lines with a capital. */
        if (!(line[0] >= 'A' && line[0] <= 'Z') && sscanf(line, "%lx-%lx ", &start, &end) == 2) {
            in = start <= (unsigned long)p && (unsigned long)p < end;
            continue;
        }
        if (in && strncmp(line, "VmFlags:", 8) == 0) {
            char want[4] = { ' ', flag[0], flag[1], 0 };
            found = strstr(line + 8, want) != NULL;
            break;
        }
    }
    fclose(f);
    return found == 1;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s STOPFILE\n", argv[0]);
        return 2;
    }
    for (int i = 0; i < N; i++) {
        /* A gap between regions keeps the kernel from merging neighbours. */
        char *p = mmap(NULL, LEN + 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        CHECK(p != MAP_FAILED, "mmap");
        munmap(p + LEN, 4096);
        regions[i].p = p;
        memset(p, 'a' + i, 8192);
        int r;
        if (regions[i].advice == -1)
            r = mlock(p, 8192);
        else if (regions[i].advice == -2)
            r = mlock2(p, 8192, MLOCK_ONFAULT);
        else
            r = madvise(p, LEN, regions[i].advice);
        CHECK(r == 0, "advice %s: %s", regions[i].flag, strerror(errno));
        CHECK(has_flag(p, regions[i].flag), "%s not shown before the checkpoint", regions[i].flag);
    }
    say("ready");
    while (access(argv[1], F_OK) != 0)
        sleep_ms(20);
    for (int i = 0; i < N; i++) {
        CHECK(has_flag(regions[i].p, regions[i].flag), "region %s lost its flag", regions[i].flag);
        CHECK(regions[i].p[4096] == 'a' + i, "region %s lost its content", regions[i].flag);
    }
    pid_t c = fork();
    CHECK(c >= 0, "fork");
    if (c == 0) {
        /* The child: the WIPEONFORK region reads as zeros, DONTFORK is not mapped. */
        if (regions[1].p[0] != 0)
            _exit(3);
        if (msync(regions[0].p, 4096, MS_ASYNC) == 0 || errno != ENOMEM)
            _exit(4);
        _exit(0);
    }
    int st;
    CHECK(waitpid(c, &st, 0) == c, "waitpid");
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child saw the fork advice lost (status %#x)", st);
    say("madvise ok");
    return 0;
}

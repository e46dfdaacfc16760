/* cowtree MIB STOPFILE
 *
 * Memory shared copy-on-write between a parent and its forked children.
 *
 * The parent maps MIB MiB of private anonymous memory and fills all of it but the
 * last 16 MiB (never touched: no pages) with a pattern tagged per page, then forks
 * four children. After the fork each process writes its own mark into a few pages
 * only: child i into 16 pages at offset i * 64 pages and, for child 2, into one page
 * of the untouched tail; the parent into the first 16 pages and the first page of
 * the tail. Every other page stays shared with the parent. Each process prints
 * "proc <i> <pid> <ppid>", then "ready <i>" once its writes are done.
 *
 * When STOPFILE exists, every process checks every page of the mapping: the pattern
 * where nobody wrote, its own marks where it wrote, zeros in the untouched tail (a
 * child must not see the parent's writes made after the fork, nor a sibling's). Each
 * prints "ok <i>" (or "FAIL: ...", exit 1); the parent reaps the children, checks
 * they exited 0 and prints "cowtree ok". */
#include "common.h"
#include <sys/mman.h>
#include <sys/wait.h>

#define PAGE 4096UL
#define NCHILD 4
#define TAIL_PAGES (16UL * 256)

static unsigned long npages;

static unsigned long tag(unsigned long page) { return page * 0x9E3779B97F4A7C15UL + 1; }

/* What process `who` (0 = parent) must see in page `p`. 0 = zero page. */
static unsigned long expected(int who, unsigned long p)
{
    unsigned long tail = npages - TAIL_PAGES;
    if (who == 0 && p < 16)
        return tag(p) ^ 0xAAAA;
    if (who > 0 && p >= (unsigned long)who * 64 && p < (unsigned long)who * 64 + 16)
        return tag(p) ^ (0x1000UL * who);
    if (p >= tail) {
        if (who == 0 && p == tail)
            return 0xBEEF;
        if (who == 2 && p == tail + 7)
            return 0xC0DE;
        return 0;
    }
    return tag(p);
}

static void write_page(char *base, unsigned long p, unsigned long v)
{
    unsigned long *w = (unsigned long *)(base + p * PAGE);
    memset(w, 0x5a, PAGE);
    w[0] = v;
    w[PAGE / 8 - 1] = ~v;
}

static void check_all(char *base, int who)
{
    for (unsigned long p = 0; p < npages; p++) {
        unsigned long *w = (unsigned long *)(base + p * PAGE);
        unsigned long v = expected(who, p);
        if (v == 0) {
            for (unsigned long i = 0; i < PAGE / 8; i++)
                if (w[i] != 0)
                    fail("process %d: page %lu word %lu is %#lx, not zero", who, p, i, w[i]);
            continue;
        }
        if (w[0] != v || w[PAGE / 8 - 1] != ~v)
            fail("process %d: page %lu holds %#lx, not %#lx", who, p, w[0], v);
        for (unsigned long i = 1; i < PAGE / 8 - 1; i++)
            if (w[i] != 0x5a5a5a5a5a5a5a5aUL)
                fail("process %d: page %lu word %lu is %#lx", who, p, i, w[i]);
    }
}

static void wait_stop(const char *stopfile)
{
    while (access(stopfile, F_OK) != 0)
        usleep(20000);
}

int main(int argc, char **argv)
{
    if (argc != 3)
        fail("usage: cowtree MIB STOPFILE");
    unsigned long mib = strtoul(argv[1], NULL, 10);
    const char *stopfile = argv[2];
    npages = mib * 256;
    if (npages < TAIL_PAGES + NCHILD * 64 + 64)
        fail("cowtree: MIB too small");
    char *base = mmap(NULL, npages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                      -1, 0);
    if (base == MAP_FAILED)
        fail("mmap: %s", strerror(errno));
    for (unsigned long p = 0; p < npages - TAIL_PAGES; p++)
        write_page(base, p, tag(p));
    say("proc 0 %d %d", getpid(), getppid());

    pid_t kids[NCHILD];
    for (int i = 1; i <= NCHILD; i++) {
        pid_t pid = fork();
        if (pid < 0)
            fail("fork: %s", strerror(errno));
        if (pid == 0) {
            for (unsigned long p = i * 64UL; p < i * 64UL + 16; p++)
                write_page(base, p, tag(p) ^ (0x1000UL * i));
            if (i == 2)
                write_page(base, npages - TAIL_PAGES + 7, 0xC0DE);
            say("proc %d %d %d", i, getpid(), getppid());
            say("ready %d", i);
            wait_stop(stopfile);
            check_all(base, i);
            say("ok %d", i);
            exit(0);
        }
        kids[i - 1] = pid;
    }
    for (unsigned long p = 0; p < 16; p++)
        write_page(base, p, tag(p) ^ 0xAAAA);
    write_page(base, npages - TAIL_PAGES, 0xBEEF);
    say("ready 0");
    wait_stop(stopfile);
    check_all(base, 0);
    say("ok 0");
    for (int i = 0; i < NCHILD; i++) {
        int st;
        if (waitpid(kids[i], &st, 0) != kids[i])
            fail("waitpid: %s", strerror(errno));
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
            fail("child %d ended with status %#x", i + 1, st);
    }
    say("cowtree ok");
    return 0;
}

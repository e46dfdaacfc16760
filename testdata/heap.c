/* heap STOPFILE
 *
 * Heavy malloc/free churn plus direct brk growth, before and after a
 * checkpoint.  Every round: 2000 random malloc/free operations over 4096
 * slots (sizes 16 B .. 1 MiB, so both the brk heap and mmap'd chunks are
 * used; every block is filled with a pattern and verified before it is
 * freed), and one sbrk() of 4..64 KiB whose result is checked against the
 * kernel's brk (syscall(SYS_brk, 0)) and filled with a pattern.  Between
 * rounds it sleeps 5 ms.  Prints "ready" after 3 rounds and "round <n>" every
 * 10 rounds.  When STOPFILE exists: verifies every live block and every sbrk
 * block, frees everything, then allocates a 96 MiB burst of small blocks and
 * checks that malloc still grows the heap with brk (the burst lies in the brk
 * heap and the kernel's brk moved), and that one more 32 MiB sbrk works.
 * Verdict: "heap ok ..." and exit 0, or "FAIL: ..." and exit 1.
 */
#include "common.h"
#include <malloc.h>
#include <stdint.h>
#include <sys/syscall.h>

#define NSLOTS 4096
#define MAXBRK 4096

static uint64_t rng = 0x853c49e6748fea9bULL;
static inline uint64_t rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

struct block {
    unsigned char *p;
    size_t len;
    unsigned char seed;
};
static struct block slots[NSLOTS];
static struct block brks[MAXBRK];
static int nbrk;

static void fill(struct block *b)
{
    for (size_t i = 0; i < b->len; i++)
        b->p[i] = (unsigned char)(b->seed + i * 31 + (i >> 12));
}

static void verify(const struct block *b, const char *what)
{
    for (size_t i = 0; i < b->len; i++)
        if (b->p[i] != (unsigned char)(b->seed + i * 31 + (i >> 12)))
            fail("%s block %p (+%zu of %zu) corrupted", what, (void *)b->p, i, b->len);
}

static uintptr_t kernel_brk(void)
{
    return (uintptr_t)syscall(SYS_brk, 0);
}

static size_t pick_size(void)
{
    uint64_t r = rnd() % 100;
    if (r < 70)
        return 16 + rnd() % 1009;             /* small */
    if (r < 95)
        return 1024 + rnd() % (64 * 1024);    /* medium */
    return 128 * 1024 + rnd() % (896 * 1024); /* large: mmap'd */
}

static void churn(int ops)
{
    for (int k = 0; k < ops; k++) {
        struct block *b = &slots[rnd() % NSLOTS];
        if (b->p) {
            verify(b, "malloc");
            free(b->p);
            b->p = NULL;
        } else {
            b->len = pick_size();
            b->p = malloc(b->len);
            CHECK(b->p, "malloc(%zu) failed", b->len);
            b->seed = (unsigned char)rnd();
            fill(b);
        }
    }
}

static void grow_brk(size_t inc)
{
    uintptr_t before = kernel_brk();
    void *cached = sbrk(0);
    CHECK((uintptr_t)cached == before, "glibc's break %p differs from the kernel's %#lx",
          cached, (unsigned long)before);
    void *old = sbrk((intptr_t)inc);
    CHECK(old != (void *)-1, "sbrk(%zu) failed: %s", inc, strerror(errno));
    CHECK(old == cached, "sbrk returned %p, expected the old break %p", old, cached);
    uintptr_t after = kernel_brk();
    CHECK(after == before + inc, "kernel brk %#lx after sbrk(%zu) from %#lx",
          (unsigned long)after, inc, (unsigned long)before);
    CHECK(nbrk < MAXBRK, "too many brk blocks");
    struct block *b = &brks[nbrk++];
    b->p = old;
    b->len = inc;
    b->seed = (unsigned char)rnd();
    fill(b);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s STOPFILE\n", argv[0]);
        return 2;
    }
    const char *stop = argv[1];
    /* fixed thresholds: no dynamic adjustment, predictable trimming */
    mallopt(M_MMAP_THRESHOLD, 128 * 1024);
    mallopt(M_TRIM_THRESHOLD, 128 * 1024);
    const uintptr_t brk_at_start = kernel_brk();

    long rounds = 0;
    for (;;) {
        churn(2000);
        grow_brk(4096 * (1 + rnd() % 16));
        rounds++;
        if (rounds == 3)
            say("ready");
        else if (rounds % 10 == 0)
            say("round %ld", rounds);
        if (file_exists(stop))
            break;
        sleep_ms(5);
    }

    int live = 0;
    for (int i = 0; i < NSLOTS; i++)
        if (slots[i].p) {
            verify(&slots[i], "malloc");
            free(slots[i].p);
            slots[i].p = NULL;
            live++;
        }
    for (int i = 0; i < nbrk; i++)
        verify(&brks[i], "sbrk");

    /* malloc must still grow the main arena with brk */
    enum { BURST = 96 << 20, SMALL = 240 };
    static void *burst[BURST / SMALL];
    uintptr_t b0 = kernel_brk();
    for (size_t i = 0; i < BURST / SMALL; i++) {
        burst[i] = malloc(SMALL);
        CHECK(burst[i], "burst malloc failed");
        memset(burst[i], (int)i, SMALL);
    }
    uintptr_t b1 = kernel_brk();
    size_t inside = 0;
    for (size_t i = 0; i < BURST / SMALL; i++)
        if ((uintptr_t)burst[i] >= brk_at_start && (uintptr_t)burst[i] < b1)
            inside++;
    CHECK(b1 >= b0 + BURST / 4, "96 MiB of small mallocs moved brk only from %#lx to %#lx",
          (unsigned long)b0, (unsigned long)b1);
    CHECK(inside * 10 >= (BURST / SMALL) * 9,
          "only %zu of %zu small blocks lie in the brk heap: malloc fell back to mmap",
          inside, (size_t)(BURST / SMALL));
    for (size_t i = 0; i < BURST / SMALL; i++) {
        unsigned char *p = burst[i];
        CHECK(p[0] == (unsigned char)i && p[SMALL - 1] == (unsigned char)i,
              "burst block %zu corrupted", i);
        free(p);
    }
    grow_brk(32 << 20);
    verify(&brks[nbrk - 1], "sbrk");

    say("heap ok rounds=%ld live=%d brk_blocks=%d brk_grew=%lu MiB", rounds, live, nbrk,
        (unsigned long)((b1 - b0) >> 20));
    return 0;
}

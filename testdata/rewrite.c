/* rewrite DIR [MIB]
 *
 * Maps MIB MiB (default 64) of private anonymous memory and fills every page with a
 * pattern of (page, round 0). Then, round after round: waits until DIR/go<r> exists
 * (r = 1, 2, ...), rewrites 5% of its pages (chosen by a hash of r) with the pattern
 * of round r, and prints "round <r>". When DIR/stop exists instead, it checks every
 * page against the rounds it has done (replaying their choices), prints
 * "verify ok <rounds> rounds <MIB> MiB" and exits 0, or "FAIL: ..." and exits 1.
 * For incremental checkpoints: between two of them, 5% of the pages change.
 */
#include "common.h"
#include <stdint.h>
#include <sys/mman.h>

#define PAGE 4096

static inline uint64_t mix(uint64_t z)
{
    z += 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static void fill(uint64_t *page, uint64_t n, uint64_t round)
{
    for (size_t w = 0; w < PAGE / 8; w++)
        page[w] = mix(n * 1000003 + w * 7 + round * 0x1234567ULL);
}

/* The k-th page round r rewrites. */
static uint64_t chosen(uint64_t r, uint64_t k, uint64_t pages)
{
    return mix(r * 0x10000000ULL + k) % pages;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s DIR [MIB]\n", argv[0]);
        return 2;
    }
    const char *dir = argv[1];
    long mib = arg_long(argc, argv, 2, 64);
    uint64_t pages = ((uint64_t)mib << 20) / PAGE;
    uint64_t per_round = pages / 20;
    unsigned char *mem = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE,
                              MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(mem != MAP_FAILED, "mmap %ld MiB: %s", mib, strerror(errno));
    for (uint64_t n = 0; n < pages; n++)
        fill((uint64_t *)(mem + n * PAGE), n, 0);
    say("ready");

    uint64_t rounds = 0;
    char go[4096], stop[4096];
    snprintf(stop, sizeof stop, "%s/stop", dir);
    for (;;) {
        snprintf(go, sizeof go, "%s/go%llu", dir, (unsigned long long)rounds + 1);
        if (access(stop, F_OK) == 0)
            break;
        if (access(go, F_OK) != 0) {
            usleep(10000);
            continue;
        }
        rounds++;
        for (uint64_t k = 0; k < per_round; k++) {
            uint64_t n = chosen(rounds, k, pages);
            fill((uint64_t *)(mem + n * PAGE), n, rounds);
        }
        say("round %llu", (unsigned long long)rounds);
    }

    /* The round that last wrote each page, replayed. */
    uint64_t *last = calloc(pages, sizeof *last);
    CHECK(last != NULL, "calloc");
    for (uint64_t r = 1; r <= rounds; r++)
        for (uint64_t k = 0; k < per_round; k++)
            last[chosen(r, k, pages)] = r;
    uint64_t *want = malloc(PAGE);
    CHECK(want != NULL, "malloc");
    for (uint64_t n = 0; n < pages; n++) {
        fill(want, n, last[n]);
        if (memcmp(want, mem + n * PAGE, PAGE) != 0)
            fail("page %llu differs from round %llu's content", (unsigned long long)n,
                 (unsigned long long)last[n]);
    }
    say("verify ok %llu rounds %ld MiB", (unsigned long long)rounds, mib);
    return 0;
}

/* bigmem STOPFILE [MIB]
 *
 * Maps MIB MiB (default 1024) of private anonymous memory, writes a pattern
 * into every 8-byte word (a hash of the word's index, so every page differs),
 * prints "ready", waits until STOPFILE exists, then re-reads all of it.
 * Prints "verify ok <MIB> MiB" and exits 0, or "FAIL: ..." and exits 1.
 */
#include "common.h"
#include <stdint.h>
#include <sys/mman.h>

static inline uint64_t pattern(uint64_t i)
{
    /* splitmix64 of the index: cheap, distinct, never all-zero pages */
    uint64_t z = i + 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s STOPFILE [MIB]\n", argv[0]);
        return 2;
    }
    const char *stop = argv[1];
    long mib = arg_long(argc, argv, 2, 1024);
    size_t len = (size_t)mib << 20;
    size_t words = len / sizeof(uint64_t);

    uint64_t *mem = mmap(NULL, len, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(mem != MAP_FAILED, "mmap %ld MiB: %s", mib, strerror(errno));
    for (size_t i = 0; i < words; i++)
        mem[i] = pattern(i);

    say("mapped %ld MiB at %p", mib, (void *)mem);
    say("ready");
    wait_for_file(stop, 20);

    for (size_t i = 0; i < words; i++)
        if (mem[i] != pattern(i))
            fail("word %zu (offset %#zx) is %#llx, expected %#llx", i,
                 i * sizeof(uint64_t), (unsigned long long)mem[i],
                 (unsigned long long)pattern(i));
    say("verify ok %ld MiB", mib);
    return 0;
}

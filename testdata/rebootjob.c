/* rebootjob SHMNAME OUTFILE STOPFILE [INTERVAL_MS]
 *
 * A job with state that a reboot loses unless the checkpoint kept it.
 *
 * A POSIX shared memory segment: shm_open(SHMNAME, O_CREAT|O_EXCL|O_RDWR)
 * (SHMNAME like "/name": the file /dev/shm/name), 256 KiB, mapped MAP_SHARED,
 * the descriptor kept open.  Word 0 counts the iterations; [4096, 256 KiB)
 * holds a pattern seeded by the PID.  And OUTFILE, open once with O_APPEND.
 *
 * Counts 1, 2, 3, ... every INTERVAL_MS (default 50): checks that the
 * segment's counter still holds the value it last stored (its private copy),
 * stores the next one, appends "<n> <pid>\n" to OUTFILE and prints "<n>"; prints
 * "ready" after the third.  Checks on every iteration that its PID did not
 * change and that the descriptor is still O_APPEND at the end of the file.
 *
 * Stops when STOPFILE exists: checks the pattern, that the open descriptor,
 * the mapping and the path /dev/shm/<name> are one file (same inode; a pwrite
 * through the descriptor shows in the mapping), prints "done <n> shm=<counter>",
 * removes the segment and exits 0.  Any failed check prints "FAIL: ..." and
 * exits 1.
 */
#include "common.h"
#include <fcntl.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/stat.h>

#define SEG_SIZE (256 * 1024)

static uint64_t pattern(size_t i, pid_t seed)
{
    return (uint64_t)i * 0x9e3779b97f4a7c15ULL ^ (uint64_t)seed;
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: %s SHMNAME OUTFILE STOPFILE [INTERVAL_MS]\n", argv[0]);
        return 2;
    }
    const char *name = argv[1], *out = argv[2], *stop = argv[3];
    long interval = arg_long(argc, argv, 4, 50);
    const pid_t pid = getpid();
    char path[512];
    snprintf(path, sizeof path, "/dev/shm%s", name);

    int shm = shm_open(name, O_CREAT | O_EXCL | O_RDWR, 0600);
    CHECK(shm >= 0, "shm_open %s: %s", name, strerror(errno));
    CHECK(ftruncate(shm, SEG_SIZE) == 0, "ftruncate: %s", strerror(errno));
    volatile uint64_t *seg = mmap(NULL, SEG_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, shm, 0);
    CHECK(seg != MAP_FAILED, "mmap: %s", strerror(errno));
    const size_t words = SEG_SIZE / 8;
    for (size_t i = 512; i < words; i++)
        seg[i] = pattern(i, pid);

    int fd = open(out, O_WRONLY | O_CREAT | O_APPEND, 0644);
    CHECK(fd >= 0, "open %s: %s", out, strerror(errno));

    uint64_t mine = 0;
    seg[0] = 0;
    for (long n = 1;; n++) {
        CHECK(getpid() == pid, "pid changed from %d to %d", (int)pid, (int)getpid());
        CHECK(seg[0] == mine, "the shared memory counter is %llu, this process last stored %llu",
              (unsigned long long)seg[0], (unsigned long long)mine);
        mine = (uint64_t)n;
        seg[0] = mine;

        int fl = fcntl(fd, F_GETFL);
        CHECK(fl >= 0 && (fl & O_APPEND), "descriptor %d lost O_APPEND: %#x", fd, fl);
        char line[64];
        int len = snprintf(line, sizeof line, "%ld %d\n", n, (int)pid);
        ssize_t w = write(fd, line, (size_t)len);
        CHECK(w == len, "write: %zd (%s)", w, strerror(errno));
        struct stat st;
        CHECK(fstat(fd, &st) == 0, "fstat: %s", strerror(errno));
        off_t pos = lseek(fd, 0, SEEK_CUR);
        CHECK(pos == st.st_size, "offset %lld is not the end of the file (%lld)",
              (long long)pos, (long long)st.st_size);

        say("%ld", n);
        if (n == 3)
            say("ready");
        if (file_exists(stop)) {
            for (size_t i = 512; i < words; i++)
                CHECK(seg[i] == pattern(i, pid), "the segment's pattern differs at word %zu", i);
            struct stat by_fd, by_path;
            CHECK(fstat(shm, &by_fd) == 0, "fstat of the segment: %s", strerror(errno));
            CHECK(stat(path, &by_path) == 0, "%s: %s", path, strerror(errno));
            CHECK(by_fd.st_ino == by_path.st_ino && by_fd.st_dev == by_path.st_dev,
                  "the open segment (inode %llu) is not %s (inode %llu)",
                  (unsigned long long)by_fd.st_ino, path, (unsigned long long)by_path.st_ino);
            CHECK(by_fd.st_size == SEG_SIZE, "the segment has %lld bytes", (long long)by_fd.st_size);
            uint64_t probe = 0x5eed5eed5eed5eedULL ^ (uint64_t)n;
            CHECK(pwrite(shm, &probe, 8, 8) == 8, "pwrite: %s", strerror(errno));
            CHECK(seg[1] == probe, "a write through the descriptor does not show in the mapping");
            say("done %ld shm=%llu", n, (unsigned long long)seg[0]);
            shm_unlink(name);
            return 0;
        }
        sleep_ms(interval);
    }
}

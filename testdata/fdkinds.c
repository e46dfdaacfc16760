/* fdkinds DIR
 *
 * Holds descriptors and mappings whose files have no name, and a FIFO, with
 * state that must survive a checkpoint:
 *   - memfd A ("ckpt-memfd-A", 3 pages): mapped MAP_SHARED (written through
 *     the mapping) and MAP_PRIVATE (first page modified privately), written
 *     through the fd too, fd offset 100, sealed F_SEAL_SHRINK|F_SEAL_GROW;
 *   - memfd B ("ckpt-memfd-B", 2 pages): mapped MAP_SHARED, written, and its
 *     fd closed (only the mapping keeps it);
 *   - memfd C ("ckpt-memfd-C"): content written, then sealed
 *     F_SEAL_WRITE|F_SEAL_SHRINK|F_SEAL_GROW|F_SEAL_SEAL, then mapped
 *     read-only MAP_SHARED;
 *   - DIR/deleted.tmp: 10000 bytes, open O_RDWR at offset 1234 and O_WRONLY|
 *     O_APPEND, mapped MAP_SHARED (2 pages), then unlinked;
 *   - DIR/fifo (a FIFO): a non-blocking read end and a write end, with 21
 *     bytes in flight.
 * Prints "ready", then reads lines from stdin.  On "check" it verifies all
 * of it (contents, offsets, flags, names, seals, that each memfd/deleted
 * file mapping and its descriptors are still the same file, and that the
 * FIFO delivers the bytes in flight then works both ways), prints
 * "fdkinds ok" and exits 0.  Failures print "FAIL: ..." and exit 1.  End of
 * input: exits 3.
 */
#include "common.h"
#include <fcntl.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/stat.h>

#define PG 4096
static const char inflight[] = "in flight 1234567890\n";

static int fdA, fdC, fdD, fdD2, fifo_r, fifo_w;
static char *mA, *pA, *mB, *mC, *mD;

static unsigned char pattern(long i)
{
    return (unsigned char)(i * 7 % 251);
}

static int memfd(const char *name, unsigned flags, size_t size)
{
    int fd = memfd_create(name, flags);
    CHECK(fd >= 0, "memfd_create %s: %s", name, strerror(errno));
    if (size)
        CHECK(ftruncate(fd, (off_t)size) == 0, "ftruncate: %s", strerror(errno));
    return fd;
}

static char *map(int fd, size_t len, int prot, int flags)
{
    char *p = mmap(NULL, len, prot, flags, fd, 0);
    CHECK(p != MAP_FAILED, "mmap: %s", strerror(errno));
    return p;
}

static void link_is(int fd, const char *want)
{
    char path[64], buf[4096];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(path, buf, sizeof buf - 1);
    CHECK(n > 0, "readlink %s: %s", path, strerror(errno));
    buf[n] = 0;
    CHECK(!strcmp(buf, want), "fd %d is %s, expected %s", fd, buf, want);
}

static void setup(const char *dir)
{
    fdA = memfd("ckpt-memfd-A", MFD_ALLOW_SEALING, 3 * PG);
    mA = map(fdA, 3 * PG, PROT_READ | PROT_WRITE, MAP_SHARED);
    for (int i = 0; i < 3; i++)
        sprintf(mA + i * PG, "memfd page %d", i);
    CHECK(pwrite(fdA, "via fd", 6, 8000) == 6, "pwrite: %s", strerror(errno));
    pA = map(fdA, 3 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE);
    pA[0] = 'P';
    CHECK(lseek(fdA, 100, SEEK_SET) == 100, "lseek");
    CHECK(fcntl(fdA, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) == 0, "seal A: %s",
          strerror(errno));

    int fdB = memfd("ckpt-memfd-B", 0, 2 * PG);
    mB = map(fdB, 2 * PG, PROT_READ | PROT_WRITE, MAP_SHARED);
    strcpy(mB + PG, "mapping only");
    close(fdB);

    fdC = memfd("ckpt-memfd-C", MFD_ALLOW_SEALING, 0);
    CHECK(write(fdC, "sealed content", 14) == 14, "write C");
    CHECK(fcntl(fdC, F_ADD_SEALS, F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) == 0,
          "seal C: %s", strerror(errno));
    mC = map(fdC, PG, PROT_READ, MAP_SHARED);

    char path[4096];
    snprintf(path, sizeof path, "%s/deleted.tmp", dir);
    fdD = open(path, O_RDWR | O_CREAT | O_TRUNC, 0640);
    CHECK(fdD >= 0, "open %s: %s", path, strerror(errno));
    unsigned char buf[10000];
    for (long i = 0; i < 10000; i++)
        buf[i] = pattern(i);
    CHECK(write(fdD, buf, sizeof buf) == sizeof buf, "write deleted");
    fdD2 = open(path, O_WRONLY | O_APPEND);
    CHECK(fdD2 >= 0, "open %s: %s", path, strerror(errno));
    mD = map(fdD, 2 * PG, PROT_READ | PROT_WRITE, MAP_SHARED);
    CHECK(lseek(fdD, 1234, SEEK_SET) == 1234, "lseek");
    CHECK(unlink(path) == 0, "unlink: %s", strerror(errno));

    snprintf(path, sizeof path, "%s/fifo", dir);
    CHECK(mkfifo(path, 0600) == 0, "mkfifo %s: %s", path, strerror(errno));
    fifo_r = open(path, O_RDONLY | O_NONBLOCK);
    CHECK(fifo_r >= 0, "open fifo: %s", strerror(errno));
    fifo_w = open(path, O_WRONLY);
    CHECK(fifo_w >= 0, "open fifo: %s", strerror(errno));
    CHECK(write(fifo_w, inflight, sizeof inflight - 1) == sizeof inflight - 1, "write fifo");
}

static void check(const char *dir)
{
    char want[4096], buf[16384];

    /* memfd A */
    snprintf(want, sizeof want, "/memfd:ckpt-memfd-A (deleted)");
    link_is(fdA, want);
    CHECK(lseek(fdA, 0, SEEK_CUR) == 100, "memfd A offset is %lld",
          (long long)lseek(fdA, 0, SEEK_CUR));
    for (int i = 0; i < 3; i++) {
        snprintf(want, sizeof want, "memfd page %d", i);
        CHECK(!strcmp(mA + i * PG, want), "memfd A shared page %d: '%.20s'", i, mA + i * PG);
    }
    CHECK(pA[0] == 'P' && !strcmp(pA + 1, "emfd page 0"), "memfd A private page 0: '%.20s'", pA);
    CHECK(!strcmp(pA + PG, "memfd page 1"), "memfd A private page 1: '%.20s'", pA + PG);
    CHECK(pread(fdA, buf, 6, 8000) == 6 && !memcmp(buf, "via fd", 6), "memfd A pread at 8000");
    CHECK(!memcmp(mA + 8000, "via fd", 6), "memfd A mapping at 8000");
    /* fd and both mappings are still one file */
    CHECK(pwrite(fdA, "alias", 5, PG + 50) == 5, "pwrite: %s", strerror(errno));
    CHECK(!memcmp(mA + PG + 50, "alias", 5), "memfd A: a write through the fd is not in the shared mapping");
    CHECK(!memcmp(pA + PG + 50, "alias", 5), "memfd A: a write through the fd is not in the private mapping");
    mA[2 * PG + 10] = 'Z';
    CHECK(pread(fdA, buf, 1, 2 * PG + 10) == 1 && buf[0] == 'Z',
          "memfd A: a write through the mapping is not in the file");
    struct stat st;
    CHECK(fstat(fdA, &st) == 0 && st.st_size == 3 * PG, "memfd A size %lld", (long long)st.st_size);
    int seals = fcntl(fdA, F_GET_SEALS);
    CHECK(seals == (F_SEAL_SHRINK | F_SEAL_GROW), "memfd A seals %#x", seals);
    errno = 0;
    CHECK(ftruncate(fdA, PG) < 0 && errno == EPERM, "memfd A shrank: %s", strerror(errno));
    CHECK((fcntl(fdA, F_GETFL) & O_ACCMODE) == O_RDWR, "memfd A not O_RDWR");

    /* memfd B: mapping only */
    CHECK(!strcmp(mB + PG, "mapping only"), "memfd B: '%.20s'", mB + PG);
    strcpy(mB, "still writable");
    CHECK(!strcmp(mB, "still writable"), "memfd B write");

    /* memfd C: sealed against writes */
    seals = fcntl(fdC, F_GET_SEALS);
    CHECK(seals == (F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL), "memfd C seals %#x",
          seals);
    errno = 0;
    CHECK(pwrite(fdC, "x", 1, 0) < 0 && errno == EPERM, "memfd C write: %s", strerror(errno));
    CHECK(!memcmp(mC, "sealed content", 14), "memfd C mapping: '%.14s'", mC);
    CHECK(pread(fdC, buf, 14, 0) == 14 && !memcmp(buf, "sealed content", 14), "memfd C pread");

    /* deleted file */
    snprintf(buf, sizeof buf, "/proc/self/fd/%d", fdD);
    ssize_t n = readlink(buf, want, sizeof want - 1);
    CHECK(n > 10, "readlink: %s", strerror(errno));
    want[n] = 0;
    CHECK(strstr(want, " (deleted)"), "deleted file is now %s", want);
    CHECK(fstat(fdD, &st) == 0 && st.st_size == 10000 && st.st_nlink == 0,
          "deleted file: size %lld links %ld", (long long)st.st_size, (long)st.st_nlink);
    CHECK(lseek(fdD, 0, SEEK_CUR) == 1234, "deleted file offset %lld",
          (long long)lseek(fdD, 0, SEEK_CUR));
    CHECK(read(fdD, buf, 100) == 100, "read deleted: %s", strerror(errno));
    for (long i = 0; i < 100; i++)
        CHECK((unsigned char)buf[i] == pattern(1234 + i), "deleted file byte %ld", 1234 + i);
    for (long i = 0; i < 2 * PG; i++)
        CHECK((unsigned char)mD[i] == pattern(i), "deleted file mapping byte %ld", i);
    CHECK(pwrite(fdD, "alias", 5, 500) == 5, "pwrite deleted");
    CHECK(!memcmp(mD + 500, "alias", 5), "deleted file: a write through the fd is not in the mapping");
    int fl = fcntl(fdD2, F_GETFL);
    CHECK((fl & O_ACCMODE) == O_WRONLY && (fl & O_APPEND), "deleted file second fd flags %#x", fl);
    CHECK(write(fdD2, "tail", 4) == 4, "append: %s", strerror(errno));
    CHECK(fstat(fdD, &st) == 0 && st.st_size == 10004, "after append, size %lld",
          (long long)st.st_size);
    CHECK(pread(fdD, buf, 4, 10000) == 4 && !memcmp(buf, "tail", 4),
          "the O_APPEND fd does not write the same file");

    /* FIFO */
    snprintf(want, sizeof want, "%s/fifo", dir);
    link_is(fifo_r, want);
    fl = fcntl(fifo_r, F_GETFL);
    CHECK((fl & O_ACCMODE) == O_RDONLY && (fl & O_NONBLOCK), "FIFO read end flags %#x", fl);
    fl = fcntl(fifo_w, F_GETFL);
    CHECK((fl & O_ACCMODE) == O_WRONLY && !(fl & O_NONBLOCK), "FIFO write end flags %#x", fl);
    n = read(fifo_r, buf, sizeof buf);
    CHECK(n == sizeof inflight - 1 && !memcmp(buf, inflight, (size_t)n),
          "FIFO data in flight: %zd bytes '%.*s'", n, (int)(n > 0 ? n : 0), buf);
    errno = 0;
    CHECK(read(fifo_r, buf, sizeof buf) < 0 && errno == EAGAIN, "empty FIFO: %s", strerror(errno));
    CHECK(write(fifo_w, "again", 5) == 5, "write FIFO: %s", strerror(errno));
    CHECK(read(fifo_r, buf, sizeof buf) == 5 && !memcmp(buf, "again", 5), "FIFO round trip");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s DIR\n", argv[0]);
        return 2;
    }
    setup(argv[1]);
    say("ready");
    char line[256];
    while (fgets(line, sizeof line, stdin)) {
        if (!strncmp(line, "check", 5)) {
            check(argv[1]);
            say("fdkinds ok");
            return 0;
        }
    }
    return 3;
}

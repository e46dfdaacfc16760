/* Private mappings of memfds and tmpfs files, and a memfd that is executed, survive
 * a checkpoint (issue 9, memory).
 *
 * usage: filemaps STOPFILE DIR [orphan]
 *
 * Each file has 8 pages, page i filled with one letter. Its MAP_PRIVATE mapping then
 * holds pages in every state a private file mapping has: written (a private copy),
 * read (the file's page), never touched, and pages of the file written after the
 * mapping was made (seen through the mapping as long as it has no copy of its own):
 *   - memfd "fm-priv": mapped whole, and a second private mapping at offset 2 pages;
 *     a MAP_SHARED mapping of it written too;
 *   - a tmpfs file DIR/fm-named.PID (still named) and DIR/fm-deleted.PID (unlinked);
 *   - with "orphan": memfd "fm-orphan" whose descriptor is closed (mapping only);
 *   - memfd "fm-exe" holding a copy of /bin/true, run with fexecve (execveat).
 * Prints "ready", waits for STOPFILE, checks every page again and runs the memfd
 * once more, and that the deleted file's descriptor still names its old path ("filemaps
 * ok" or "FAIL: ..."). DIR should be a tmpfs (/dev/shm). */
#include "common.h"
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <sys/wait.h>

#define PG 4096
#define NPG 8

struct map {
    const char *what;
    char *p;
    const char *want; /* one letter per page */
};

static struct map maps[8];
static int nmaps;

static void fill(int fd, char first)
{
    CHECK(ftruncate(fd, NPG * PG) == 0, "ftruncate: %s", strerror(errno));
    char b[PG];
    for (int i = 0; i < NPG; i++) {
        memset(b, first + i, PG);
        CHECK(pwrite(fd, b, PG, i * PG) == PG, "pwrite: %s", strerror(errno));
    }
}

static void put(int fd, int page, char c)
{
    char b[PG];
    memset(b, c, PG);
    CHECK(pwrite(fd, b, PG, page * PG) == PG, "pwrite: %s", strerror(errno));
}

static char *map(int fd, int pages, int off, int flags)
{
    char *p = mmap(NULL, pages * PG, PROT_READ | PROT_WRITE, flags, fd, off * PG);
    CHECK(p != MAP_FAILED, "mmap: %s", strerror(errno));
    return p;
}

/* Page 0 and 2 written through the mapping, 1 read, 3 read then rewritten in the file,
 * 4 rewritten in the file untouched, the rest untouched. Returns the mapping. */
static char *private_states(const char *what, int fd, char first, const char *want)
{
    char *p = map(fd, NPG, 0, MAP_PRIVATE);
    memset(p, 'p', PG);
    memset(p + 2 * PG, 'q', PG);
    volatile char c = p[PG];
    c = p[3 * PG];
    (void)c;
    put(fd, 3, 'r');
    put(fd, 4, 's');
    (void)first;
    maps[nmaps++] = (struct map){ what, p, want };
    return p;
}

static void check_all(void)
{
    for (int m = 0; m < nmaps; m++)
        for (int i = 0; maps[m].want[i]; i++)
            for (int j = 0; j < PG; j++)
                CHECK(maps[m].p[i * PG + j] == maps[m].want[i],
                      "%s page %d byte %d is %#x, want '%c'", maps[m].what, i, j,
                      (unsigned char)maps[m].p[i * PG + j], maps[m].want[i]);
}

static void run_memfd(int fd)
{
    pid_t p = fork();
    CHECK(p >= 0, "fork: %s", strerror(errno));
    if (p == 0) {
        char *argv[] = { "true", NULL }, *envp[] = { NULL };
        fexecve(fd, argv, envp);
        printf("FAIL: fexecve of memfd fm-exe: %s\n", strerror(errno));
        fflush(stdout);
        _exit(9);
    }
    int st;
    CHECK(waitpid(p, &st, 0) == p, "waitpid");
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the memfd ran with status %#x", st);
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s STOPFILE DIR [orphan]\n", argv[0]);
        return 2;
    }
    int orphan = argc > 3 && !strcmp(argv[3], "orphan");

    int mfd = memfd_create("fm-priv", 0);
    CHECK(mfd >= 0, "memfd_create: %s", strerror(errno));
    fill(mfd, 'A');
    char *off = map(mfd, 4, 2, MAP_PRIVATE); /* file pages 2..5 */
    memset(off + PG, 'o', PG);               /* file page 3: a private copy */
    char *sh = map(mfd, NPG, 0, MAP_SHARED);
    memset(sh + 5 * PG, 'S', PG); /* file page 5, written through the shared mapping */
    private_states("memfd fm-priv", mfd, 'A', "pBqrsSGH");
    /* The offset mapping never touched file page 2 and 4 before they changed. */
    maps[nmaps++] = (struct map){ "memfd fm-priv at offset 2 pages", off, "CosS" };
    maps[nmaps++] = (struct map){ "memfd fm-priv shared", sh, "ABCrsSGH" };

    char path[4096];
    snprintf(path, sizeof path, "%s/fm-named.%d", argv[2], (int)getpid());
    int named = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    CHECK(named >= 0, "open %s: %s", path, strerror(errno));
    fill(named, 'a');
    private_states("tmpfs file", named, 'a', "pbqrsfgh");
    close(named);

    snprintf(path, sizeof path, "%s/fm-deleted.%d", argv[2], (int)getpid());
    int del = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    CHECK(del >= 0, "open %s: %s", path, strerror(errno));
    CHECK(unlink(path) == 0, "unlink %s", path);
    fill(del, '0');
    private_states("deleted tmpfs file", del, '0', "p1qrs567");

    if (orphan) {
        int o = memfd_create("fm-orphan", 0);
        CHECK(o >= 0, "memfd_create: %s", strerror(errno));
        fill(o, 'K');
        private_states("memfd fm-orphan (mapping only)", o, 'K', "pLqrsPQR");
        close(o);
    }

    int exe = memfd_create("fm-exe", MFD_CLOEXEC);
    CHECK(exe >= 0, "memfd_create: %s", strerror(errno));
    int src = open("/bin/true", O_RDONLY);
    struct stat st;
    CHECK(src >= 0 && fstat(src, &st) == 0, "/bin/true: %s", strerror(errno));
    CHECK(sendfile(exe, src, NULL, st.st_size) == st.st_size, "sendfile: %s", strerror(errno));
    close(src);

    check_all();
    run_memfd(exe);
    say("ready");
    while (access(argv[1], F_OK) != 0)
        sleep_ms(10);
    check_all();
    run_memfd(exe);
    /* The deleted file keeps its name, as /proc shows it. */
    char link[4096], want[4200], fdp[64];
    snprintf(fdp, sizeof fdp, "/proc/self/fd/%d", del);
    ssize_t n = readlink(fdp, link, sizeof link - 1);
    CHECK(n > 0, "readlink %s: %s", fdp, strerror(errno));
    link[n] = 0;
    snprintf(want, sizeof want, "%s/fm-deleted.%d (deleted)", argv[2], (int)getpid());
    CHECK(!strcmp(link, want), "the deleted file's descriptor names %s, not %s", link, want);
    snprintf(path, sizeof path, "%s/fm-named.%d", argv[2], (int)getpid());
    unlink(path);
    say("filemaps ok");
    return 0;
}

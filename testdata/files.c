/* files CASE DIR [ARGS]
 *
 * Holds descriptors on files whose state a restore could silently change, then
 * prints "ready" and waits for DIR/check to exist; then checks that state from
 * inside, printing "ok NAME" or "FAIL: NAME: why" for each check, then
 * "files done FAILURES" and exits (0: no failure, 1: some). CASE:
 *
 *   deleted [UID GID]  DIR/sparse: a 5 MiB file with holes (data at 1 MiB and
 *          3 MiB, a hole at the end), mode 0640, owner UID:GID (given: chown to
 *          them, root only), mtime/atime set in the past, open O_RDWR at offset
 *          4242, then unlinked; DIR/mapped the same, also mapped MAP_SHARED over
 *          its first extent; and a file opened O_TMPFILE in DIR with 7 bytes.
 *          As root, also DIR/maponly the same, mapped MAP_SHARED whole, then its
 *          descriptor closed: only the mapping holds it.
 *          After: same holes (SEEK_DATA/SEEK_HOLE), content, size, blocks, owner,
 *          mode, times, offset, nlink 0; the O_TMPFILE file's content and offset;
 *          DIR/maponly seen through /proc/self/map_files (root).
 *   big SIZE   DIR/big: SIZE bytes of data (dense), open, unlinked.
 *   mtime      DIR/kept opened O_RDONLY (and mapped) and DIR/kept2 O_RDWR, both with
 *          times set in the past; after: the same mtime and atime.
 *   ghosts     DIR/fifo (a FIFO) open for reading (non-blocking) and writing
 *          with 11 bytes in flight, then unlinked; DIR/gone (mode 0750) open
 *          as a descriptor and DIR/cwd (mode 0710) as the working directory,
 *          both removed. After: the FIFO is an unlinked FIFO with its data and
 *          works both ways; the directories are unlinked, empty directories
 *          with their modes; getcwd fails with ENOENT.
 *   devices [mknod] /dev/null, /dev/zero, /dev/urandom, and (with "mknod",
 *          root) DIR/mynull, a node made with mknod (char 1:3). After: each is
 *          the same device at the same path and behaves as one.
 *   opath      O_PATH descriptors of DIR/f (regular file), DIR/d (directory)
 *          and DIR/l (symlink to f, O_PATH|O_NOFOLLOW). After: O_PATH, same
 *          inode and type, the symlink's target, openat through the directory.
 *   flags      status flags per descriptor: pipe 1 read end O_NONBLOCK and write
 *          end blocking, pipe 2 the other way round, with O_ASYNC on its read
 *          end; pipe 1 capacity 256 KiB; pipe 1's read end opened again through
 *          /proc (a separate description, blocking); DIR/twice opened twice
 *          (O_RDWR|O_APPEND and O_RDONLY|O_NOATIME|O_NONBLOCK) and the first dup'ed
 *          with FD_CLOEXEC on the dup only; DIR/direct opened O_DIRECT. After:
 *          each flag on its own descriptor, dups share their description (flag
 *          and offset) and separate opens do not.
 */
#include "common.h"
#include <dirent.h>
#include <fcntl.h>
#include <linux/limits.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/types.h>

#define MiB (1L << 20)

static int failures;
static char dir[PATH_MAX - 64];

__attribute__((format(printf, 3, 4))) static void check(int cond, const char *name,
                                                        const char *fmt, ...)
{
    if (cond) {
        say("ok %s", name);
        return;
    }
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    say("FAIL: %s: %s", name, buf);
    failures++;
}

static void path_in(char *out, const char *name)
{
    snprintf(out, PATH_MAX, "%s/%s", dir, name);
}

static void wait_check(void)
{
    char p[PATH_MAX];
    path_in(p, "check");
    say("ready");
    wait_for_file(p, 20);
}

static struct stat fstat_of(int fd)
{
    struct stat st;
    if (fstat(fd, &st) != 0)
        fail("fstat %d: %s", fd, strerror(errno));
    return st;
}

static int flags_of(int fd)
{
    return fcntl(fd, F_GETFL);
}

/* ------------------------------------------------------------ times */

static const struct timespec old_times[2] = {
    { 1000000000, 111111111 }, /* atime */
    { 1100000000, 222222222 }, /* mtime */
};

static void set_old_times(int fd)
{
    if (futimens(fd, old_times) != 0)
        fail("futimens: %s", strerror(errno));
}

static void check_times(int fd, const char *what)
{
    struct stat st = fstat_of(fd);
    char name[128];
    snprintf(name, sizeof name, "%s mtime", what);
    check(st.st_mtim.tv_sec == old_times[1].tv_sec && st.st_mtim.tv_nsec == old_times[1].tv_nsec,
          name, "%ld.%09ld, want %ld.%09ld", (long)st.st_mtim.tv_sec, st.st_mtim.tv_nsec,
          (long)old_times[1].tv_sec, old_times[1].tv_nsec);
    snprintf(name, sizeof name, "%s atime", what);
    check(st.st_atim.tv_sec == old_times[0].tv_sec && st.st_atim.tv_nsec == old_times[0].tv_nsec,
          name, "%ld.%09ld, want %ld.%09ld", (long)st.st_atim.tv_sec, st.st_atim.tv_nsec,
          (long)old_times[0].tv_sec, old_times[0].tv_nsec);
}

/* ------------------------------------------------------------ deleted */

#define SPARSE_SIZE (5 * MiB)
static const struct {
    off_t off;
    size_t len;
} extents[] = { { 1 * MiB, 128 << 10 }, { 3 * MiB, 64 << 10 } };

static unsigned char byte_at(off_t i)
{
    return (unsigned char)(i * 13 % 251 + 1);
}

static void write_extent(int fd, off_t off, size_t len)
{
    unsigned char *b = malloc(len);
    for (size_t i = 0; i < len; i++)
        b[i] = byte_at(off + (off_t)i);
    if (pwrite(fd, b, len, off) != (ssize_t)len)
        fail("pwrite: %s", strerror(errno));
    free(b);
}

/* The data extents as SEEK_DATA/SEEK_HOLE walk them, into `out` ("off+len,..."). */
static void layout(int fd, char *out, size_t n)
{
    off_t pos = 0, end = lseek(fd, 0, SEEK_END);
    out[0] = 0;
    while (pos < end) {
        off_t d = lseek(fd, pos, SEEK_DATA);
        if (d < 0)
            break;
        off_t h = lseek(fd, d, SEEK_HOLE);
        size_t l = strlen(out);
        snprintf(out + l, n - l, "%ld+%ld,", (long)d, (long)(h - d));
        pos = h;
    }
}

struct sparse {
    const char *name; /* also the prefix of its checks */
    int fd;
    char layout[256];
    struct stat st;
    unsigned char *map; /* MAP_SHARED over the first extent, or NULL */
};
static struct sparse files[3] = { { .name = "deleted" }, { .name = "mapped" },
                                  { .name = "maponly" } };
static int tmpfile_fd;

/* DIR/NAME with the holes, mode, owner and times, then unlinked; with `map`, mapped
 * too (the mapping then carries its content in the image, the descriptor its layout). */
static void make_sparse(struct sparse *f, int map, int argc, char **argv)
{
    char p[PATH_MAX];
    path_in(p, f->name);
    f->fd = open(p, O_RDWR | O_CREAT | O_EXCL, 0600);
    CHECK(f->fd >= 0, "open %s: %s", p, strerror(errno));
    CHECK(ftruncate(f->fd, SPARSE_SIZE) == 0, "ftruncate: %s", strerror(errno));
    for (size_t i = 0; i < sizeof extents / sizeof extents[0]; i++)
        write_extent(f->fd, extents[i].off, extents[i].len);
    CHECK(fsync(f->fd) == 0, "fsync: %s", strerror(errno));
    CHECK(fchmod(f->fd, 0640) == 0, "fchmod: %s", strerror(errno));
    if (argc >= 2)
        CHECK(fchown(f->fd, (uid_t)atoi(argv[0]), (gid_t)atoi(argv[1])) == 0,
              "fchown: %s", strerror(errno));
    if (map == 1) {
        f->map = mmap(NULL, extents[0].len, PROT_READ, MAP_SHARED, f->fd, extents[0].off);
        CHECK(f->map != MAP_FAILED, "mmap: %s", strerror(errno));
    } else if (map == 2) {
        f->map = mmap(NULL, SPARSE_SIZE, PROT_READ, MAP_SHARED, f->fd, 0);
        CHECK(f->map != MAP_FAILED, "mmap: %s", strerror(errno));
    }
    set_old_times(f->fd);
    layout(f->fd, f->layout, sizeof f->layout);
    say("layout %s", f->layout);
    CHECK(lseek(f->fd, 4242, SEEK_SET) == 4242, "lseek: %s", strerror(errno));
    f->st = fstat_of(f->fd);
    CHECK(unlink(p) == 0, "unlink: %s", strerror(errno));
    if (map == 2) {
        close(f->fd);
        f->fd = -1;
    }
}

static void deleted_setup(int argc, char **argv)
{
    make_sparse(&files[0], 0, argc, argv);
    make_sparse(&files[1], 1, argc, argv);
    if (geteuid() == 0)
        make_sparse(&files[2], 2, argc, argv);
    /* A file that never had a name. */
    tmpfile_fd = open(dir, O_TMPFILE | O_RDWR, 0600);
    CHECK(tmpfile_fd >= 0, "O_TMPFILE: %s", strerror(errno));
    CHECK(write(tmpfile_fd, "tmpfile", 7) == 7, "write: %s", strerror(errno));
}

static void check_sparse(struct sparse *f)
{
    char name[64];
#define NAME(what) (snprintf(name, sizeof name, "%s %s", f->name, what), name)
    int by_map = f->fd < 0;
    if (by_map) {
        /* Only the mapping holds it: open it through map_files (root). */
        char p[64];
        snprintf(p, sizeof p, "/proc/self/map_files/%lx-%lx", (unsigned long)f->map,
                 (unsigned long)f->map + SPARSE_SIZE);
        f->fd = open(p, O_RDONLY | O_NOATIME);
        CHECK(f->fd >= 0, "open %s: %s", p, strerror(errno));
    }
    struct stat st = fstat_of(f->fd);
    check(st.st_nlink == 0, NAME("nlink"), "nlink %ld", (long)st.st_nlink);
    check(S_ISREG(st.st_mode) && (st.st_mode & 07777) == 0640, NAME("mode"), "mode %o",
          st.st_mode);
    check(st.st_uid == f->st.st_uid && st.st_gid == f->st.st_gid, NAME("owner"),
          "%d:%d, want %d:%d", st.st_uid, st.st_gid, f->st.st_uid, f->st.st_gid);
    check(st.st_size == SPARSE_SIZE, NAME("size"), "%ld", (long)st.st_size);
    check(st.st_blocks <= f->st.st_blocks, NAME("blocks"), "%ld blocks, was %ld",
          (long)st.st_blocks, (long)f->st.st_blocks);
    check_times(f->fd, f->name);
    if (!by_map)
        check(lseek(f->fd, 0, SEEK_CUR) == 4242, NAME("offset"), "%ld",
              (long)lseek(f->fd, 0, SEEK_CUR));
    char now[256];
    layout(f->fd, now, sizeof now);
    check(strcmp(now, f->layout) == 0, NAME("holes"), "layout %s, was %s", now, f->layout);
    int good = 1;
    unsigned char *b = malloc(SPARSE_SIZE);
    if (pread(f->fd, b, SPARSE_SIZE, 0) != SPARSE_SIZE)
        good = 0;
    for (off_t i = 0; good && i < SPARSE_SIZE; i++) {
        int in = 0;
        for (size_t e = 0; e < sizeof extents / sizeof extents[0]; e++)
            in |= i >= extents[e].off && i < extents[e].off + (off_t)extents[e].len;
        if (b[i] != (in ? byte_at(i) : 0))
            good = 0;
    }
    free(b);
    check(good, NAME("content"), "content differs");
    if (f->map && !by_map) {
        int same = 1;
        for (size_t i = 0; i < extents[0].len; i++)
            same &= f->map[i] == byte_at(extents[0].off + (off_t)i);
        check(same, NAME("mapping"), "the mapping shows other bytes");
    }
    if (by_map) {
        int same = 1;
        for (off_t e = 0; e < 2; e++)
            for (size_t i = 0; i < extents[e].len; i++)
                same &= f->map[extents[e].off + i] == byte_at(extents[e].off + (off_t)i);
        check(same, NAME("mapping"), "the mapping shows other bytes");
        return;
    }
    /* Still writable, and the offset moves. */
    check(write(f->fd, "x", 1) == 1, NAME("write"), "%s", strerror(errno));
#undef NAME
}

static void deleted_check(void)
{
    check_sparse(&files[0]);
    check_sparse(&files[1]);
    if (files[2].map)
        check_sparse(&files[2]);
    char t[8] = { 0 };
    check(pread(tmpfile_fd, t, 7, 0) == 7 && strcmp(t, "tmpfile") == 0 &&
              lseek(tmpfile_fd, 0, SEEK_CUR) == 7 && (flags_of(tmpfile_fd) & O_ACCMODE) == O_RDWR,
          "O_TMPFILE file", "%s, offset %ld, flags %o", t, (long)lseek(tmpfile_fd, 0, SEEK_CUR),
          flags_of(tmpfile_fd));
}

static int big_fd;

static void big_setup(int argc, char **argv)
{
    CHECK(argc >= 1, "big SIZE");
    long size = atol(argv[0]);
    char p[PATH_MAX];
    path_in(p, "big");
    big_fd = open(p, O_RDWR | O_CREAT | O_EXCL, 0600);
    CHECK(big_fd >= 0, "open %s: %s", p, strerror(errno));
    char *b = malloc(MiB);
    memset(b, 'b', MiB);
    for (long off = 0; off < size; off += MiB) {
        size_t n = size - off < MiB ? (size_t)(size - off) : MiB;
        CHECK(pwrite(big_fd, b, n, off) == (ssize_t)n, "pwrite: %s", strerror(errno));
    }
    free(b);
    CHECK(unlink(p) == 0, "unlink: %s", strerror(errno));
    say("fd %d", big_fd);
}

static void big_check(void)
{
    char c = 0;
    check(pread(big_fd, &c, 1, 0) == 1 && c == 'b', "big content", "%c", c);
}

/* ------------------------------------------------------------ mtime */

static int kept_fd, kept2_fd;

static int open_old(const char *name, int flags)
{
    char p[PATH_MAX];
    path_in(p, name);
    int fd = open(p, flags | O_CREAT, 0644);
    CHECK(fd >= 0, "open %s: %s", p, strerror(errno));
    return fd;
}

static void mtime_setup(void)
{
    kept_fd = open_old("kept", O_RDWR);
    CHECK(write(kept_fd, "kept content\n", 13) == 13, "write: %s", strerror(errno));
    set_old_times(kept_fd);
    close(kept_fd);
    kept_fd = open_old("kept", O_RDONLY);
    /* Mapped too: the restore maps it again, which must not touch its atime either. */
    CHECK(mmap(NULL, 4096, PROT_READ, MAP_SHARED, kept_fd, 0) != MAP_FAILED, "mmap: %s",
          strerror(errno));
    set_old_times(kept_fd);
    kept2_fd = open_old("kept2", O_RDWR);
    CHECK(write(kept2_fd, "kept2\n", 6) == 6, "write: %s", strerror(errno));
    set_old_times(kept2_fd);
}

static void mtime_check(void)
{
    check_times(kept_fd, "kept");
    check_times(kept2_fd, "kept2");
}

/* ------------------------------------------------------------ ghosts */

static int fifo_r, fifo_w, gone_fd;
static const char fifo_data[] = "ghost data\n";

static void ghosts_setup(void)
{
    char p[PATH_MAX];
    path_in(p, "fifo");
    CHECK(mkfifo(p, 0620) == 0 && chmod(p, 0620) == 0, "mkfifo: %s", strerror(errno));
    fifo_r = open(p, O_RDONLY | O_NONBLOCK);
    CHECK(fifo_r >= 0, "open fifo: %s", strerror(errno));
    fifo_w = open(p, O_WRONLY);
    CHECK(fifo_w >= 0, "open fifo: %s", strerror(errno));
    CHECK(write(fifo_w, fifo_data, strlen(fifo_data)) == (ssize_t)strlen(fifo_data), "write");
    CHECK(unlink(p) == 0, "unlink: %s", strerror(errno));

    path_in(p, "gone");
    CHECK(mkdir(p, 0750) == 0, "mkdir: %s", strerror(errno));
    CHECK(chmod(p, 0750) == 0, "chmod: %s", strerror(errno));
    gone_fd = open(p, O_RDONLY | O_DIRECTORY);
    CHECK(gone_fd >= 0, "open dir: %s", strerror(errno));
    CHECK(rmdir(p) == 0, "rmdir: %s", strerror(errno));

    path_in(p, "cwd");
    CHECK(mkdir(p, 0710) == 0, "mkdir: %s", strerror(errno));
    CHECK(chmod(p, 0710) == 0, "chmod: %s", strerror(errno));
    CHECK(chdir(p) == 0, "chdir: %s", strerror(errno));
    CHECK(rmdir(p) == 0, "rmdir: %s", strerror(errno));
}

/* The link of /proc/self/LINK names DIR/NAME (deleted), as it did. */
static void link_names(const char *link, const char *name, const char *what)
{
    char want[PATH_MAX + 16], got[PATH_MAX + 16], lp[64], check_name[128];
    path_in(want, name);
    strcat(want, " (deleted)");
    snprintf(lp, sizeof lp, "/proc/self/%s", link);
    ssize_t n = readlink(lp, got, sizeof got - 1);
    got[n > 0 ? n : 0] = 0;
    snprintf(check_name, sizeof check_name, "%s keeps its name", what);
    check(n > 0 && strcmp(got, want) == 0, check_name, "%s names %s, not %s", lp, got, want);
}

static void check_empty_dir(int fd, const char *what)
{
    char name[128];
    struct stat st = fstat_of(fd);
    snprintf(name, sizeof name, "%s is an unlinked directory", what);
    check(S_ISDIR(st.st_mode) && st.st_nlink == 0, name, "mode %o nlink %ld", st.st_mode,
          (long)st.st_nlink);
    snprintf(name, sizeof name, "%s cannot hold new files", what);
    int f = openat(fd, "new", O_CREAT | O_WRONLY, 0600);
    check(f < 0 && errno == ENOENT, name, "openat: %d %s", f, strerror(errno));
}

static void ghosts_check(void)
{
    struct stat st = fstat_of(fifo_r);
    check(S_ISFIFO(st.st_mode) && st.st_nlink == 0, "fifo is an unlinked FIFO",
          "mode %o nlink %ld", st.st_mode, (long)st.st_nlink);
    check((st.st_mode & 07777) == 0620, "fifo mode", "%o", st.st_mode & 07777);
    struct stat sw = fstat_of(fifo_w);
    check(sw.st_ino == st.st_ino && sw.st_dev == st.st_dev, "fifo ends are one FIFO",
          "inodes %lu and %lu", (unsigned long)st.st_ino, (unsigned long)sw.st_ino);
    check((flags_of(fifo_r) & O_NONBLOCK) && !(flags_of(fifo_w) & O_NONBLOCK),
          "fifo flags", "%o %o", flags_of(fifo_r), flags_of(fifo_w));
    char buf[64] = { 0 };
    ssize_t n = read(fifo_r, buf, sizeof buf - 1);
    check(n == (ssize_t)strlen(fifo_data) && strcmp(buf, fifo_data) == 0,
          "fifo data in flight", "read %zd %s", n, strerror(errno));
    check(write(fifo_w, "again", 5) == 5 && read(fifo_r, buf, sizeof buf) == 5,
          "fifo works", "%s", strerror(errno));
    n = read(fifo_r, buf, sizeof buf);
    check(n < 0 && errno == EAGAIN, "fifo empty", "read %zd", n);

    char lk[32];
    snprintf(lk, sizeof lk, "fd/%d", fifo_r);
    link_names(lk, "fifo", "fifo");
    snprintf(lk, sizeof lk, "fd/%d", gone_fd);
    link_names(lk, "gone", "dir fd");
    link_names("cwd", "cwd", "cwd");
    check_empty_dir(gone_fd, "dir fd");
    st = fstat_of(gone_fd);
    check((st.st_mode & 07777) == 0750, "dir fd mode", "%o", st.st_mode & 07777);
    int cwd = open(".", O_RDONLY | O_DIRECTORY);
    check(cwd >= 0, "cwd opens", "%s", strerror(errno));
    if (cwd >= 0) {
        check_empty_dir(cwd, "cwd");
        st = fstat_of(cwd);
        check((st.st_mode & 07777) == 0710, "cwd mode", "%o", st.st_mode & 07777);
    }
    char wd[PATH_MAX];
    errno = 0;
    check(getcwd(wd, sizeof wd) == NULL && errno == ENOENT, "getcwd fails", "%s",
          errno ? strerror(errno) : wd);
}

/* ------------------------------------------------------------ devices */

static int null_fd, zero_fd, urandom_fd, mynull_fd = -1;
static char mynull_path[PATH_MAX];

static void devices_setup(int argc, char **argv)
{
    null_fd = open("/dev/null", O_WRONLY);
    zero_fd = open("/dev/zero", O_RDONLY);
    urandom_fd = open("/dev/urandom", O_RDONLY | O_NONBLOCK);
    CHECK(null_fd >= 0 && zero_fd >= 0 && urandom_fd >= 0, "open devices: %s",
          strerror(errno));
    if (argc >= 1 && strcmp(argv[0], "mknod") == 0) {
        path_in(mynull_path, "mynull");
        CHECK(mknod(mynull_path, S_IFCHR | 0666, makedev(1, 3)) == 0, "mknod: %s",
              strerror(errno));
        mynull_fd = open(mynull_path, O_RDWR);
        CHECK(mynull_fd >= 0, "open mynull: %s", strerror(errno));
    }
}

static void is_device(int fd, const char *path, unsigned maj, unsigned min)
{
    char name[PATH_MAX + 32], link[64], target[PATH_MAX] = { 0 };
    struct stat st = fstat_of(fd);
    snprintf(name, sizeof name, "device %s", path);
    check(S_ISCHR(st.st_mode) && major(st.st_rdev) == maj && minor(st.st_rdev) == min, name,
          "mode %o rdev %u:%u", st.st_mode, major(st.st_rdev), minor(st.st_rdev));
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, target, sizeof target - 1);
    snprintf(name, sizeof name, "device path %s", path);
    check(n > 0 && strcmp(target, path) == 0, name, "link %s", target);
}

static void devices_check(void)
{
    is_device(null_fd, "/dev/null", 1, 3);
    is_device(zero_fd, "/dev/zero", 1, 5);
    is_device(urandom_fd, "/dev/urandom", 1, 9);
    check(write(null_fd, "x", 1) == 1, "null writes", "%s", strerror(errno));
    char b[16];
    memset(b, 1, sizeof b);
    check(read(zero_fd, b, sizeof b) == sizeof b && b[0] == 0 && b[15] == 0, "zero reads",
          "%s", strerror(errno));
    check(read(urandom_fd, b, sizeof b) == sizeof b, "urandom reads", "%s", strerror(errno));
    check(flags_of(urandom_fd) & O_NONBLOCK, "urandom nonblock", "%o", flags_of(urandom_fd));
    if (mynull_fd >= 0) {
        is_device(mynull_fd, mynull_path, 1, 3);
        check(write(mynull_fd, "x", 1) == 1 && read(mynull_fd, b, 1) == 0, "mynull works",
              "%s", strerror(errno));
    }
}

/* ------------------------------------------------------------ opath */

static int opath_f, opath_d, opath_l;
static struct stat st_f, st_d, st_l;

static void opath_setup(void)
{
    char p[PATH_MAX], q[PATH_MAX];
    path_in(p, "f");
    int f = open(p, O_CREAT | O_WRONLY, 0644);
    CHECK(f >= 0, "create f: %s", strerror(errno));
    close(f);
    path_in(q, "d");
    CHECK(mkdir(q, 0755) == 0, "mkdir: %s", strerror(errno));
    path_in(q, "d/inner");
    f = open(q, O_CREAT | O_WRONLY, 0644);
    CHECK(f >= 0, "create d/inner: %s", strerror(errno));
    close(f);
    path_in(q, "l");
    CHECK(symlink("f", q) == 0, "symlink: %s", strerror(errno));
    opath_f = open(p, O_PATH);
    path_in(q, "d");
    opath_d = open(q, O_PATH | O_DIRECTORY);
    path_in(q, "l");
    opath_l = open(q, O_PATH | O_NOFOLLOW);
    CHECK(opath_f >= 0 && opath_d >= 0 && opath_l >= 0, "O_PATH: %s", strerror(errno));
    CHECK(fstatat(opath_f, "", &st_f, AT_EMPTY_PATH) == 0, "fstatat");
    CHECK(fstatat(opath_d, "", &st_d, AT_EMPTY_PATH) == 0, "fstatat");
    CHECK(fstatat(opath_l, "", &st_l, AT_EMPTY_PATH) == 0, "fstatat");
}

static void same_opath(int fd, const struct stat *was, const char *what)
{
    char name[128];
    struct stat st;
    snprintf(name, sizeof name, "%s is O_PATH", what);
    check(flags_of(fd) & O_PATH, name, "flags %o", flags_of(fd));
    snprintf(name, sizeof name, "%s same file", what);
    int r = fstatat(fd, "", &st, AT_EMPTY_PATH);
    check(r == 0 && st.st_ino == was->st_ino && st.st_dev == was->st_dev &&
              (st.st_mode & S_IFMT) == (was->st_mode & S_IFMT),
          name, "ino %lu mode %o, was %lu %o", (unsigned long)st.st_ino, st.st_mode,
          (unsigned long)was->st_ino, was->st_mode);
}

static void opath_check(void)
{
    same_opath(opath_f, &st_f, "opath file");
    same_opath(opath_d, &st_d, "opath dir");
    same_opath(opath_l, &st_l, "opath symlink");
    char t[64] = { 0 };
    ssize_t n = readlinkat(opath_l, "", t, sizeof t - 1);
    check(n == 1 && t[0] == 'f', "opath symlink target", "%zd %s", n, t);
    int f = openat(opath_d, "inner", O_RDONLY);
    check(f >= 0, "opath dir openat", "%s", strerror(errno));
    char b;
    errno = 0;
    check(read(opath_f, &b, 1) < 0 && errno == EBADF, "opath file not readable", "%s",
          strerror(errno));
}

/* ------------------------------------------------------------ flags */

static int p1[2], p2[2], p1r_again, tw_a, tw_b, tw_c, direct_fd = -1;

static void setfl(int fd, int add)
{
    CHECK(fcntl(fd, F_SETFL, flags_of(fd) | add) == 0, "F_SETFL: %s", strerror(errno));
}

static void flags_setup(void)
{
    CHECK(pipe(p1) == 0 && pipe(p2) == 0, "pipe");
    setfl(p1[0], O_NONBLOCK);
    setfl(p2[1], O_NONBLOCK);
    CHECK(fcntl(p2[0], F_SETOWN, getpid()) == 0, "F_SETOWN: %s", strerror(errno));
    setfl(p2[0], O_ASYNC);
    CHECK(fcntl(p1[1], F_SETPIPE_SZ, 256 << 10) >= 256 << 10, "F_SETPIPE_SZ: %s",
          strerror(errno));
    char p[PATH_MAX];
    snprintf(p, sizeof p, "/proc/self/fd/%d", p1[0]);
    p1r_again = open(p, O_RDONLY);
    CHECK(p1r_again >= 0, "reopen pipe: %s", strerror(errno));
    tw_a = open_old("twice", O_RDWR | O_APPEND);
    tw_b = open_old("twice", O_RDONLY | O_NOATIME | O_NONBLOCK);
    tw_c = fcntl(tw_a, F_DUPFD_CLOEXEC, 0);
    CHECK(tw_c >= 0, "dup: %s", strerror(errno));
    CHECK(write(tw_a, "0123456789", 10) == 10, "write");
    CHECK(lseek(tw_a, 3, SEEK_SET) == 3 && lseek(tw_b, 7, SEEK_SET) == 7, "lseek");
    path_in(p, "direct");
    direct_fd = open(p, O_RDWR | O_CREAT | O_DIRECT, 0644);
    CHECK(direct_fd >= 0, "O_DIRECT: %s", strerror(errno));
}

static void has_flags(int fd, int want, int not, const char *what)
{
    int f = flags_of(fd);
    check((f & want) == want && !(f & not), what, "flags %o: want %o without %o", f, want, not);
}

static void flags_check(void)
{
    has_flags(p1[0], O_NONBLOCK, 0, "pipe1 read end nonblocking");
    has_flags(p1[1], 0, O_NONBLOCK, "pipe1 write end blocking");
    has_flags(p2[0], O_ASYNC, O_NONBLOCK, "pipe2 read end blocking, async");
    has_flags(p2[1], O_NONBLOCK, O_ASYNC, "pipe2 write end nonblocking");
    has_flags(p1r_again, 0, O_NONBLOCK, "pipe1 read end reopened blocking");
    check(fcntl(p2[0], F_GETOWN) == getpid(), "pipe2 owner", "%d", fcntl(p2[0], F_GETOWN));
    check(fcntl(p1[1], F_GETPIPE_SZ) == 256 << 10, "pipe1 capacity", "%d",
          fcntl(p1[1], F_GETPIPE_SZ));
    check(fcntl(p2[1], F_GETPIPE_SZ) == 64 << 10, "pipe2 capacity", "%d",
          fcntl(p2[1], F_GETPIPE_SZ));
    has_flags(tw_a, O_APPEND | O_RDWR, O_NONBLOCK | O_NOATIME, "twice first open");
    has_flags(tw_b, O_NOATIME | O_NONBLOCK, O_APPEND, "twice second open");
    has_flags(tw_c, O_APPEND | O_RDWR, O_NONBLOCK, "twice dup");
    if (direct_fd >= 0)
        has_flags(direct_fd, O_DIRECT, 0, "direct");
    check(fcntl(tw_a, F_GETFD) == 0 && fcntl(tw_c, F_GETFD) == FD_CLOEXEC,
          "close-on-exec per descriptor", "%d %d", fcntl(tw_a, F_GETFD), fcntl(tw_c, F_GETFD));
    check(lseek(tw_c, 0, SEEK_CUR) == 3 && lseek(tw_b, 0, SEEK_CUR) == 7, "offsets",
          "%ld %ld", (long)lseek(tw_c, 0, SEEK_CUR), (long)lseek(tw_b, 0, SEEK_CUR));
    /* Dups share their description, separate opens do not. */
    setfl(tw_a, O_NONBLOCK);
    has_flags(tw_c, O_NONBLOCK, 0, "dup shares the description");
    lseek(tw_c, 5, SEEK_SET);
    check(lseek(tw_a, 0, SEEK_CUR) == 5, "dup shares the offset", "%ld",
          (long)lseek(tw_a, 0, SEEK_CUR));
    setfl(tw_b, O_APPEND);
    has_flags(tw_a, 0, O_NOATIME, "second open is its own description");
    CHECK(fcntl(p1[0], F_SETFL, 0) == 0, "F_SETFL");
    setfl(p1r_again, O_NONBLOCK);
    has_flags(p1[0], 0, O_NONBLOCK, "reopened pipe end is its own description");
    /* The pipes still work. */
    char b[1];
    check(write(p1[1], "a", 1) == 1 && read(p1r_again, b, 1) == 1 && b[0] == 'a', "pipe1 works",
          "%s", strerror(errno));
}

int main(int argc, char **argv)
{
    if (argc < 3)
        fail("usage: files CASE DIR [ARGS]");
    const char *c = argv[1];
    snprintf(dir, sizeof dir, "%s", argv[2]);
    int n = argc - 3;
    char **rest = argv + 3;
    void (*after)(void);
    if (strcmp(c, "deleted") == 0) {
        deleted_setup(n, rest);
        after = deleted_check;
    } else if (strcmp(c, "big") == 0) {
        big_setup(n, rest);
        after = big_check;
    } else if (strcmp(c, "mtime") == 0) {
        mtime_setup();
        after = mtime_check;
    } else if (strcmp(c, "ghosts") == 0) {
        ghosts_setup();
        after = ghosts_check;
    } else if (strcmp(c, "devices") == 0) {
        devices_setup(n, rest);
        after = devices_check;
    } else if (strcmp(c, "opath") == 0) {
        opath_setup();
        after = opath_check;
    } else if (strcmp(c, "flags") == 0) {
        flags_setup();
        after = flags_check;
    } else {
        fail("unknown case %s", c);
    }
    wait_check();
    after();
    say("files done %d", failures);
    return failures ? 1 : 0;
}

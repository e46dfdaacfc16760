/* holdfd KIND STOPFILE
 *
 * Holds one descriptor of a kind that ckpt does not support, prints
 * "fd <n> kind <KIND>" and "ready", then prints "tick <n>" every 20 ms until
 * STOPFILE exists ("done" and exit 0).  The ticks let a test see that the
 * process keeps running after a refused dump.
 * KIND: netlink   (NETLINK_ROUTE socket)
 *       io_uring  (io_uring_setup(2) instance)
 *       epoll-stale (an epoll instance, printed as the fd, with an entry for
 *                 an eventfd registered under a number since closed: the
 *                 eventfd lives on under another number)
 *       epoll-reused (the same, and the closed number now holds another eventfd)
 *       big-memfd (a memfd of 300 MiB, sparse: more than ckpt stores)
 *       inotify-queued (an inotify instance watching the working directory, with
 *                 the event of a file created there queued, not read)
 */
#include "common.h"
#include <linux/netlink.h>
#include <sys/epoll.h>
#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s netlink|io_uring|epoll-stale|epoll-reused|big-memfd|inotify-queued STOPFILE\n", argv[0]);
        return 2;
    }
    const char *kind = argv[1], *stop = argv[2];
    int fd;
    if (!strcmp(kind, "netlink")) {
        fd = socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE);
        CHECK(fd >= 0, "netlink socket: %s", strerror(errno));
    } else if (!strcmp(kind, "io_uring")) {
        unsigned char params[120]; /* struct io_uring_params */
        memset(params, 0, sizeof params);
        fd = (int)syscall(SYS_io_uring_setup, 4, params);
        CHECK(fd >= 0, "io_uring_setup: %s", strerror(errno));
    } else if (!strcmp(kind, "epoll-stale") || !strcmp(kind, "epoll-reused")) {
        fd = epoll_create1(0);
        int e = eventfd(0, 0);
        CHECK(fd >= 0 && e >= 0, "epoll/eventfd: %s", strerror(errno));
        struct epoll_event ev = { .events = EPOLLIN, .data.u64 = 1 };
        CHECK(epoll_ctl(fd, EPOLL_CTL_ADD, e, &ev) == 0, "epoll_ctl: %s", strerror(errno));
        CHECK(dup2(e, e + 10) == e + 10, "dup2: %s", strerror(errno));
        close(e);
        if (!strcmp(kind, "epoll-reused"))
            CHECK(eventfd(0, 0) == e, "eventfd did not reuse fd %d", e);
    } else if (!strcmp(kind, "big-memfd")) {
        fd = memfd_create("big", 0);
        CHECK(fd >= 0 && ftruncate(fd, 300L << 20) == 0, "memfd: %s", strerror(errno));
    } else if (!strcmp(kind, "inotify-queued")) {
        char dir[64] = "/tmp/holdfd-inotify-XXXXXX", file[96];
        CHECK(mkdtemp(dir), "mkdtemp: %s", strerror(errno));
        fd = inotify_init1(IN_NONBLOCK);
        CHECK(fd >= 0 && inotify_add_watch(fd, dir, IN_CREATE) == 1, "inotify: %s", strerror(errno));
        snprintf(file, sizeof file, "%s/f", dir);
        int f = open(file, O_CREAT | O_WRONLY, 0600);
        CHECK(f >= 0, "creating %s: %s", file, strerror(errno));
        close(f);
        unlink(file);
        rmdir(dir);
    } else {
        fail("unknown kind '%s'", kind);
    }
    say("fd %d kind %s", fd, kind);
    say("ready");
    for (long n = 1; !file_exists(stop); n++) {
        say("tick %ld", n);
        sleep_ms(20);
    }
    say("done");
    return 0;
}

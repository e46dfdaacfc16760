/* holdfd KIND STOPFILE
 *
 * Holds one descriptor of a kind that ckpt does not support, prints
 * "fd <n> kind <KIND>" and "ready", then prints "tick <n>" every 20 ms until
 * STOPFILE exists ("done" and exit 0).  The ticks let a test see that the
 * process keeps running after a refused dump.
 * KIND: netlink   (NETLINK_ROUTE socket)
 *       io_uring  (io_uring_setup(2) instance)
 */
#include "common.h"
#include <linux/netlink.h>
#include <sys/socket.h>
#include <sys/syscall.h>

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s netlink|io_uring STOPFILE\n", argv[0]);
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

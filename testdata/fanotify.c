/* A fanotify group survives a checkpoint (issue 9).
 *
 * usage: fanotify STOPFILE DIR [fid]
 *
 * Makes a group (FAN_CLASS_NOTIF, O_NONBLOCK; with "fid", FAN_REPORT_FID as an
 * ordinary user may) with an inode mark on DIR/watched (FAN_MODIFY | FAN_CLOSE_WRITE),
 * a mark on DIR for FAN_OPEN of its children, and an ignored mask (FAN_OPEN, surviving
 * modification) on DIR/ignored. Prints "ready", waits for STOPFILE, then checks the
 * group: writing DIR/watched reports FAN_MODIFY and FAN_CLOSE_WRITE on it, opening
 * DIR/other reports FAN_OPEN, opening DIR/ignored reports nothing ("fanotify ok" or
 * "FAIL: ..."). */
#include "common.h"
#include <fcntl.h>
#include <poll.h>
#include <sys/fanotify.h>
#include <sys/stat.h>

static int g;
static int fid;

static void touch_file(const char *dir, const char *name, int write_it)
{
    char p[4096];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    int f = open(p, (write_it ? O_WRONLY : O_RDONLY) | O_CREAT, 0600);
    CHECK(f >= 0, "open %s: %s", p, strerror(errno));
    if (write_it)
        CHECK(write(f, "x", 1) == 1, "write %s", p);
    close(f);
}

/* Every event queued within `ms`: the OR of their masks (and closes their fds). */
static unsigned long long drain(int ms)
{
    unsigned long long seen = 0;
    struct pollfd pfd = { g, POLLIN, 0 };
    char buf[8192] __attribute__((aligned(8)));
    while (poll(&pfd, 1, ms) == 1) {
        ssize_t n = read(g, buf, sizeof buf);
        if (n <= 0)
            break;
        for (struct fanotify_event_metadata *m = (void *)buf; FAN_EVENT_OK(m, n);
             m = FAN_EVENT_NEXT(m, n)) {
            seen |= m->mask;
            if (!fid && m->fd >= 0)
                close(m->fd);
        }
        ms = 100;
    }
    return seen;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s STOPFILE DIR [fid]\n", argv[0]);
        return 2;
    }
    const char *dir = argv[2];
    fid = argc > 3 && !strcmp(argv[3], "fid");
    unsigned flags = FAN_CLASS_NOTIF | FAN_NONBLOCK | FAN_CLOEXEC | (fid ? FAN_REPORT_FID : 0);
    g = fanotify_init(flags, O_RDONLY);
    CHECK(g >= 0, "fanotify_init: %s", strerror(errno));
    touch_file(dir, "watched", 0);
    touch_file(dir, "ignored", 0);
    touch_file(dir, "other", 0);
    char p[4096];
    snprintf(p, sizeof p, "%s/watched", dir);
    CHECK(fanotify_mark(g, FAN_MARK_ADD, FAN_MODIFY | FAN_CLOSE_WRITE, AT_FDCWD, p) == 0,
          "mark %s: %s", p, strerror(errno));
    CHECK(fanotify_mark(g, FAN_MARK_ADD, FAN_OPEN | FAN_EVENT_ON_CHILD, AT_FDCWD, dir) == 0,
          "mark %s: %s", dir, strerror(errno));
    snprintf(p, sizeof p, "%s/ignored", dir);
    CHECK(fanotify_mark(g, FAN_MARK_ADD | FAN_MARK_IGNORED_MASK | FAN_MARK_IGNORED_SURV_MODIFY,
                        FAN_OPEN, AT_FDCWD, p) == 0,
          "ignore %s: %s", p, strerror(errno));
    drain(50);
    say("ready");
    while (access(argv[1], F_OK) != 0)
        sleep_ms(10);
    CHECK(fcntl(g, F_GETFL) & O_NONBLOCK, "the group lost O_NONBLOCK");
    touch_file(dir, "watched", 1);
    unsigned long long seen = drain(2000);
    CHECK((seen & (FAN_MODIFY | FAN_CLOSE_WRITE)) == (FAN_MODIFY | FAN_CLOSE_WRITE),
          "writing watched reported %#llx", seen);
    touch_file(dir, "other", 0);
    seen = drain(2000);
    CHECK(seen & FAN_OPEN, "opening other reported %#llx", seen);
    touch_file(dir, "ignored", 0);
    seen = drain(300);
    CHECK(!(seen & FAN_OPEN), "opening ignored reported %#llx", seen);
    say("fanotify ok");
    return 0;
}

/* counter OUTFILE STOPFILE [INTERVAL_MS]
 *
 * Counts 1, 2, 3, ... and appends "<n> <pid>\n" to OUTFILE for each number,
 * alternating between two descriptors that are both open with O_APPEND (so a
 * restore that loses O_APPEND or the file offset overwrites lines instead of
 * appending).  Prints each number on stdout, and "ready" after the third.
 * Checks on every iteration that its PID and the descriptor flags did not
 * change.  Stops when STOPFILE exists: prints "done <last>" and exits 0.
 */
#include "common.h"
#include <fcntl.h>
#include <sys/stat.h>

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s OUTFILE STOPFILE [INTERVAL_MS]\n", argv[0]);
        return 2;
    }
    const char *out = argv[1], *stop = argv[2];
    long interval = arg_long(argc, argv, 3, 50);

    int fds[2];
    for (int k = 0; k < 2; k++) {
        fds[k] = open(out, O_WRONLY | O_CREAT | O_APPEND, 0644);
        CHECK(fds[k] >= 0, "open %s: %s", out, strerror(errno));
    }
    const pid_t pid = getpid();

    for (long n = 1;; n++) {
        int fd = fds[n % 2];
        int fl = fcntl(fd, F_GETFL);
        CHECK(fl >= 0 && (fl & O_APPEND) && (fl & O_ACCMODE) == O_WRONLY,
              "descriptor %d lost its flags: %#x", fd, fl);
        CHECK(getpid() == pid, "pid changed from %d to %d", (int)pid, (int)getpid());

        char line[64];
        int len = snprintf(line, sizeof line, "%ld %d\n", n, (int)pid);
        ssize_t w = write(fd, line, (size_t)len);
        CHECK(w == len, "write: %zd (%s)", w, strerror(errno));
        /* with O_APPEND the offset is the end of the file after every write */
        struct stat st;
        CHECK(fstat(fd, &st) == 0, "fstat: %s", strerror(errno));
        off_t pos = lseek(fd, 0, SEEK_CUR);
        CHECK(pos == st.st_size, "offset %lld is not the end of the file (%lld)",
              (long long)pos, (long long)st.st_size);

        say("%ld", n);
        if (n == 3)
            say("ready");
        if (file_exists(stop)) {
            say("done %ld", n);
            return 0;
        }
        sleep_ms(interval);
    }
}

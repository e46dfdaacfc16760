/* rawtty FILE: a program that puts its terminal (standard input) in raw mode, as an
 * editor or a shell's line editor does, and answers each line typed with "got LINE"
 * in upper case (so that the line itself appears on the screen only if the terminal
 * echoes it). Writes its PID to FILE once raw. After each line it also says whether
 * the terminal still has the termios it set ("termios same" / "termios differ").
 * A line "q" exits at once without putting the terminal back (as a killed program
 * would leave it): whoever ran it must restore it. */
#include "common.h"
#include <ctype.h>
#include <termios.h>

int main(int argc, char **argv)
{
    CHECK(argc == 2, "usage: rawtty FILE");
    struct termios t;
    CHECK(tcgetattr(0, &t) == 0, "tcgetattr: %s", strerror(errno));
    cfmakeraw(&t);
    t.c_cc[VMIN] = 1;
    t.c_cc[VTIME] = 0;
    CHECK(tcsetattr(0, TCSANOW, &t) == 0, "tcsetattr: %s", strerror(errno));
    CHECK(tcgetattr(0, &t) == 0, "tcgetattr: %s", strerror(errno));
    FILE *f = fopen(argv[1], "w");
    CHECK(f, "fopen %s", argv[1]);
    fprintf(f, "%d\n", getpid());
    fclose(f);
    printf("raw\r\n");
    fflush(stdout);
    char line[256];
    size_t n = 0;
    for (;;) {
        char c;
        ssize_t r = read(0, &c, 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return 1;
        if (c != '\r' && c != '\n') {
            if (n < sizeof line - 1)
                line[n++] = toupper((unsigned char)c);
            continue;
        }
        line[n] = 0;
        if (strcmp(line, "Q") == 0)
            return 0;
        struct termios now;
        CHECK(tcgetattr(0, &now) == 0, "tcgetattr: %s", strerror(errno));
        int same = now.c_iflag == t.c_iflag && now.c_oflag == t.c_oflag && now.c_cflag == t.c_cflag &&
                   now.c_lflag == t.c_lflag && memcmp(now.c_cc, t.c_cc, NCCS) == 0;
        printf("got %s termios %s\r\n", line, same ? "same" : "differ");
        fflush(stdout);
        n = 0;
    }
}

/* A remote shell between the "hosts" (network namespaces) of tests/multinode.rs, for
 * Open MPI's rsh launcher (`--mca plm_rsh_agent rsh_netns`), as ssh and sshd are
 * between real hosts (issue 10).
 *
 *   rsh_netns -s PORT PROG ARGS...
 *     The daemon ("sshd") of a host: listens on PORT of every address of its
 *     namespace; for each connection, reads one line (a shell command) and runs
 *     PROG ARGS... /bin/sh -c LINE with the connection as its stdin, stdout and
 *     stderr (PROG is `ckpt run ... --`, so that each remote command is a job of its
 *     own on that host, registered with the coordinator). It is no descendant of the
 *     client: the remote command is not part of the client's job.
 *
 *   rsh_netns HOST CMD...
 *     The client ("ssh HOST CMD..."): connects to HOST:PORT (RSH_NETNS_PORT, 7790 by
 *     default), sends CMD... joined by spaces and a newline, then copies its stdin to
 *     the connection (but not the end of its stdin: a half-closed connection cannot
 *     be checkpointed) and the connection to its stdout until the remote command's
 *     end (end of file on the connection), and exits 0.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static int port(void)
{
    const char *p = getenv("RSH_NETNS_PORT");
    return p && *p ? atoi(p) : 7790;
}

static int write_all(int fd, const char *b, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, b, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        b += w;
        n -= (size_t)w;
    }
    return 0;
}

static int serve(int argc, char **argv)
{
    signal(SIGCHLD, SIG_IGN); /* no zombies */
    int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
    if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 16)) {
        perror("rsh_netns -s: listen");
        return 1;
    }
    printf("listening\n");
    fflush(stdout);
    for (;;) {
        int c = accept4(l, NULL, NULL, SOCK_CLOEXEC);
        if (c < 0) {
            if (errno == EINTR)
                continue;
            perror("rsh_netns -s: accept");
            return 1;
        }
        pid_t p = fork();
        if (p == 0) {
            signal(SIGCHLD, SIG_DFL);
            static char line[65536];
            size_t n = 0;
            char ch;
            /* one byte at a time: nothing after the line is taken from the command */
            while (n + 1 < sizeof line && read(c, &ch, 1) == 1 && ch != '\n')
                line[n++] = ch;
            line[n] = 0;
            dup2(c, 0);
            dup2(c, 1);
            dup2(c, 2);
            char **args = calloc((size_t)argc, sizeof *args);
            int k = 0;
            for (int i = 3; i < argc; i++)
                args[k++] = argv[i];
            args[k++] = "/bin/sh";
            args[k++] = "-c";
            args[k++] = line;
            args[k] = NULL;
            execvp(args[0], args);
            perror("rsh_netns -s: exec");
            _exit(127);
        }
        close(c);
    }
}

static int client(int argc, char **argv)
{
    size_t len = 2;
    for (int i = 2; i < argc; i++)
        len += strlen(argv[i]) + 1;
    char *cmd = calloc(len, 1);
    for (int i = 2; i < argc; i++) {
        if (i > 2)
            strcat(cmd, " ");
        strcat(cmd, argv[i]);
    }
    strcat(cmd, "\n");
    int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port())};
    if (inet_pton(AF_INET, argv[1], &a.sin_addr) != 1) {
        fprintf(stderr, "rsh_netns: %s: not an IPv4 address\n", argv[1]);
        return 255;
    }
    if (s < 0 || connect(s, (struct sockaddr *)&a, sizeof a)) {
        fprintf(stderr, "rsh_netns: connect %s:%d: %s\n", argv[1], port(), strerror(errno));
        return 255;
    }
    if (write_all(s, cmd, strlen(cmd)))
        return 255;
    int in_open = 1;
    char buf[65536];
    for (;;) {
        struct pollfd f[2] = {{.fd = s, .events = POLLIN}, {.fd = 0, .events = POLLIN}};
        int r = poll(f, in_open ? 2 : 1, -1);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return 255;
        }
        if (f[0].revents) {
            ssize_t n = read(s, buf, sizeof buf);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0)
                return 0;
            if (write_all(1, buf, (size_t)n))
                return 255;
        }
        if (in_open && f[1].revents) {
            ssize_t n = read(0, buf, sizeof buf);
            if (n < 0 && errno == EINTR)
                continue;
            /* end of our stdin is not passed on: a half-closed connection could not
             * be checkpointed with --tcp-established */
            if (n <= 0)
                in_open = 0;
            else if (write_all(s, buf, (size_t)n)) {
                return 255;
            }
        }
    }
}

int main(int argc, char **argv)
{
    if (argc >= 4 && strcmp(argv[1], "-s") == 0)
        return serve(argc, argv);
    if (argc >= 3 && argv[1][0] != '-')
        return client(argc, argv);
    fprintf(stderr, "usage: rsh_netns -s PORT PROG ARGS... | rsh_netns HOST CMD...\n");
    return 2;
}

/* aioring FILE STOPFILE
 *
 * Linux native aio (io_setup) across a checkpoint. Writes 64 KiB of a pattern to
 * FILE, makes an aio context for 32 requests and runs 9 reads through it (io_submit,
 * then io_getevents for each), so that the ring's head and tail are 9. Prints
 * "ring <addr> nr <n>" and "ready", then "tick N" every 20 ms until STOPFILE exists.
 * Then checks the ring where the program expects it (the context id is the ring's
 * address: magic, the same number of events, head and tail still 9), runs 300 more
 * reads through the same context (the ring wraps past its end) checking each event
 * (its data tag, its result) and the bytes read, and prints "aio ok". */
#include "common.h"
#include <fcntl.h>
#include <linux/aio_abi.h>
#include <sys/syscall.h>

#define AIO_RING_MAGIC 0xa10a10a1

struct ring {
    unsigned id, nr, head, tail, magic, compat, incompat, header_length;
};

static aio_context_t ctx;
static int fd;

static void one_read(int n)
{
    char buf[4096];
    struct iocb cb = { 0 };
    struct iocb *list[1] = { &cb };
    cb.aio_data = 0x1000 + n;
    cb.aio_lio_opcode = IOCB_CMD_PREAD;
    cb.aio_fildes = fd;
    cb.aio_buf = (unsigned long)buf;
    cb.aio_nbytes = sizeof buf;
    cb.aio_offset = (n % 16) * 4096;
    CHECK(syscall(SYS_io_submit, ctx, 1, list) == 1, "io_submit %d: %s", n, strerror(errno));
    struct io_event ev;
    CHECK(syscall(SYS_io_getevents, ctx, 1, 1, &ev, NULL) == 1, "io_getevents %d: %s", n,
          strerror(errno));
    CHECK(ev.data == (unsigned long)(0x1000 + n) && ev.res == 4096, "event %d: data %#llx res %lld",
          n, (unsigned long long)ev.data, (long long)ev.res);
    for (int i = 0; i < 4096; i++)
        CHECK(buf[i] == (char)('a' + (n % 16) + i % 7), "read %d: byte %d", n, i);
}

int main(int argc, char **argv)
{
    if (argc != 3)
        fail("usage: aioring FILE STOPFILE");
    fd = open(argv[1], O_RDWR | O_CREAT | O_TRUNC, 0600);
    CHECK(fd >= 0, "open: %s", strerror(errno));
    for (int b = 0; b < 16; b++) {
        char blk[4096];
        for (int i = 0; i < 4096; i++)
            blk[i] = (char)('a' + b + i % 7);
        CHECK(write(fd, blk, sizeof blk) == sizeof blk, "write");
    }
    CHECK(syscall(SYS_io_setup, 32, &ctx) == 0, "io_setup: %s", strerror(errno));
    for (int n = 0; n < 9; n++)
        one_read(n);
    struct ring *r = (struct ring *)ctx;
    unsigned nr = r->nr;
    say("ring %#lx nr %u", (unsigned long)ctx, nr);
    say("ready");
    for (int n = 0; access(argv[2], F_OK) != 0; n++) {
        say("tick %d", n);
        sleep_ms(20);
    }
    CHECK(r->magic == AIO_RING_MAGIC, "ring magic %#x", r->magic);
    CHECK(r->nr == nr, "ring of %u events, not %u", r->nr, nr);
    CHECK(r->head == 9 && r->tail == 9, "ring head %u tail %u, not 9 9", r->head, r->tail);
    for (int n = 9; n < 309; n++)
        one_read(n);
    CHECK(r->head == r->tail, "ring head %u tail %u", r->head, r->tail);
    say("aio ok");
    return 0;
}

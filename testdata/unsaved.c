/* A process with one attribute that ckpt does not save: the dump must refuse it,
 * naming the attribute, and leave the process running unharmed.
 *
 * usage: unsaved tsc|ldt|mempolicy|shmpart|aio STOPFILE
 *
 *   tsc        prctl(PR_SET_TSC, PR_TSC_SIGSEGV): rdtsc faults
 *   ldt        an LDT entry (modify_ldt)
 *   mempolicy  set_mempolicy(MPOL_PREFERRED, node 0)
 *   shmpart    a SysV shared memory segment of two pages attached, its second page
 *              unmapped
 *   aio        an aio context (io_setup) whose ring holds a completed read not yet
 *              reaped (io_getevents)
 *
 * Prints "ready", then "tick N" every 20 ms until STOPFILE exists, then checks
 * that the attribute is still set and prints "unsaved ok". */
#include "common.h"
#include <fcntl.h>
#include <asm/ldt.h>
#include <sys/prctl.h>
#include <linux/aio_abi.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <sys/syscall.h>

#define MPOL_PREFERRED 1

static int get_tsc(void)
{
    int v = -1;
    prctl(PR_GET_TSC, &v, 0, 0, 0);
    return v;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s tsc|ldt|mempolicy|shmpart|aio STOPFILE\n", argv[0]);
        return 2;
    }
    const char *what = argv[1];
    int id = -1;
    char *seg = NULL;
    aio_context_t ctx = 0;
    struct user_desc d = { .entry_number = 0, .base_addr = 0x1000, .limit = 0xff,
                           .seg_32bit = 1, .useable = 1 };
    if (strcmp(what, "tsc") == 0) {
        CHECK(prctl(PR_SET_TSC, PR_TSC_SIGSEGV, 0, 0, 0) == 0, "PR_SET_TSC: %s", strerror(errno));
    } else if (strcmp(what, "ldt") == 0) {
        CHECK(syscall(SYS_modify_ldt, 1, &d, sizeof d) == 0, "modify_ldt: %s", strerror(errno));
    } else if (strcmp(what, "mempolicy") == 0) {
        unsigned long mask = 1;
        CHECK(syscall(SYS_set_mempolicy, MPOL_PREFERRED, &mask, 64) == 0, "set_mempolicy: %s",
              strerror(errno));
    } else if (strcmp(what, "shmpart") == 0) {
        id = shmget(IPC_PRIVATE, 8192, 0600);
        CHECK(id >= 0, "shmget: %s", strerror(errno));
        seg = shmat(id, NULL, 0);
        CHECK(seg != (void *)-1, "shmat: %s", strerror(errno));
        strcpy(seg, "attached");
        CHECK(munmap(seg + 4096, 4096) == 0, "munmap: %s", strerror(errno));
        CHECK(shmctl(id, IPC_RMID, NULL) == 0, "IPC_RMID: %s", strerror(errno));
    } else if (strcmp(what, "aio") == 0) {
        CHECK(syscall(SYS_io_setup, 4, &ctx) == 0, "io_setup: %s", strerror(errno));
        static char buf[16];
        static struct iocb cb;
        struct iocb *list[1] = { &cb };
        cb.aio_lio_opcode = IOCB_CMD_PREAD;
        cb.aio_fildes = open(argv[0], O_RDONLY);
        cb.aio_buf = (unsigned long)buf;
        cb.aio_nbytes = sizeof buf;
        CHECK(syscall(SYS_io_submit, ctx, 1, list) == 1, "io_submit: %s", strerror(errno));
    } else {
        fail("unknown attribute %s", what);
    }
    say("ready");
    for (int n = 0; access(argv[2], F_OK) != 0; n++) {
        say("tick %d", n);
        sleep_ms(20);
    }
    if (strcmp(what, "tsc") == 0) {
        CHECK(get_tsc() == PR_TSC_SIGSEGV, "TSC mode %d", get_tsc());
    } else if (strcmp(what, "ldt") == 0) {
        char buf[16];
        CHECK(syscall(SYS_modify_ldt, 0, buf, sizeof buf) > 0, "the LDT is gone");
    } else if (strcmp(what, "mempolicy") == 0) {
        int mode = -1;
        CHECK(syscall(SYS_get_mempolicy, &mode, NULL, 0, NULL, 0) == 0 && mode == MPOL_PREFERRED,
              "memory policy %d", mode);
    } else if (strcmp(what, "shmpart") == 0) {
        CHECK(strcmp(seg, "attached") == 0, "the segment holds %.8s", seg);
        CHECK(shmdt(seg) == 0, "shmdt: %s", strerror(errno));
    } else if (strcmp(what, "aio") == 0) {
        struct io_event ev;
        CHECK(syscall(SYS_io_getevents, ctx, 1, 1, &ev, NULL) == 1 && ev.res == 16,
              "the completed read: %s", strerror(errno));
        CHECK(syscall(SYS_io_destroy, ctx) == 0, "io_destroy: %s", strerror(errno));
    }
    say("unsaved ok");
    return 0;
}

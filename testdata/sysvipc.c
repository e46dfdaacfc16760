/* sysvipc hold DIR
 * sysvipc undo DIR
 * sysvipc take KIND ID KEY
 *
 * SysV IPC objects across a checkpoint.
 *
 * hold: creates, with keys derived from its pid (0x5c000000 + 4 * pid + 0, 1, 2):
 *   - a message queue, mode 0640, holding three messages: type 1 "one", type 7 a
 *     300-byte binary pattern (with zero bytes), type 1 "three";
 *   - a set of three semaphores, mode 0660, set to 5, 0, 42, then semop +7 on the
 *     second (no SEM_UNDO): 5, 7, 42;
 *   - a shared memory segment of 3 pages + 100 bytes, mode 0600, attached where the
 *     kernel chooses, filled with a pattern.
 *   Prints "ids msg=<id> sem=<id> shm=<id> addr=<hex>" and "ready", then waits until
 *   DIR/go exists and checks, with the ids and address it kept in memory: each object's
 *   key, mode and size; the messages (received in order, type and bytes); the semaphore
 *   values; the segment's content through the attachment, that the attachment is at
 *   the same address and is the segment (/proc/self/maps names it with its id as the
 *   inode; a write through a second attachment shows in the first, and nattch counts
 *   both). Removes the three objects, prints "sysvipc ok" and exits 0.
 *
 * undo: a semaphore set of one, semop +1 with SEM_UNDO: the adjustment cannot be
 *   read from outside, the dump must refuse. Prints "ids sem=<id>" and "ready", waits.
 *
 * pair: a tree of two sharing a message queue and a segment. The parent makes both
 *   (keys as above, + 0 and + 2), attaches the segment and forks; the child (which
 *   inherits the attachment) sends "child" (type 2) and waits. The parent prints "ids
 *   msg=<id> shm=<id> child=<pid>" and "ready" once the message is there. After DIR/go: the child
 *   writes 0x77 at byte 100 of the segment and sends "done" (type 3); the parent
 *   receives it (waiting), checks the byte (the two attachments are one segment), the
 *   message "child", that nattch is 2, lets the child exit (type 4), reaps it (status
 *   0), removes both objects and prints "pair ok".
 *
 * private: IPC_PRIVATE objects, as programs that share memory with their children or
 *   with an X server make them: a queue (mode 0600) holding "private" (type 5), and a
 *   segment of two pages attached, filled with a pattern, then removed (IPC_RMID) while
 *   attached, so that it goes with the last detach. Prints "ids msg=<id> shm=<id>
 *   addr=<hex>" and "ready"; after DIR/go checks the message, the segment's content,
 *   that it is still marked removed (SHM_DEST) with key 0 and one attachment, detaches
 *   it and checks that it is gone, removes the queue and prints "private ok".
 *
 * take KIND ID KEY: creates a message queue (KIND msg) with id ID (through
 *   /proc/sys/kernel/msg_next_id) and key KEY, mode 0600, and prints "took <id>".
 */
#include "common.h"
#include <stdint.h>
#include <sys/ipc.h>
#include <sys/msg.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <sys/wait.h>

#define PAGE 4096UL
#define SHM_SIZE (3 * PAGE + 100)

union semun {
    int val;
    struct semid_ds *buf;
    unsigned short *array;
};

struct msg {
    long type;
    char text[512];
};

static unsigned char bin(int k) { return (unsigned char)((k * 37 + 11) % 251) * (k % 5 != 0); }

static int key_of(int n) { return 0x5c000000 + 4 * getpid() + n; }

static void put(int q, long type, const void *p, size_t n)
{
    struct msg m = { .type = type };
    memcpy(m.text, p, n);
    CHECK(msgsnd(q, &m, n, IPC_NOWAIT) == 0, "msgsnd: %s", strerror(errno));
}

static void get(int q, long type, const void *p, size_t n)
{
    struct msg m;
    ssize_t got = msgrcv(q, &m, sizeof m.text, 0, IPC_NOWAIT);
    CHECK(got >= 0, "msgrcv: %s", strerror(errno));
    CHECK(m.type == type, "message of type %ld, expected %ld", m.type, type);
    CHECK((size_t)got == n && memcmp(m.text, p, n) == 0,
          "message of type %ld: %zd bytes, not the saved %zu", type, got, n);
}

static unsigned char pat(size_t k) { return (unsigned char)(k * 131 + k / 4096 + 3); }

static void take(const char *kind, int id, int key)
{
    CHECK(strcmp(kind, "msg") == 0, "take: unknown kind %s", kind);
    FILE *f = fopen("/proc/sys/kernel/msg_next_id", "w");
    CHECK(f, "msg_next_id: %s", strerror(errno));
    fprintf(f, "%d\n", id);
    CHECK(fclose(f) == 0, "msg_next_id: %s", strerror(errno));
    int q = msgget(key, IPC_CREAT | IPC_EXCL | 0600);
    CHECK(q >= 0, "msgget: %s", strerror(errno));
    say("took %d", q);
}

int main(int argc, char **argv)
{
    if (argc == 5 && strcmp(argv[1], "take") == 0) {
        take(argv[2], atoi(argv[3]), (int)strtol(argv[4], NULL, 0));
        return 0;
    }
    if (argc != 3)
        fail("usage: sysvipc hold|undo DIR");
    char go[4096];
    snprintf(go, sizeof go, "%s/go", argv[2]);

    if (strcmp(argv[1], "undo") == 0) {
        int s = semget(key_of(1), 1, IPC_CREAT | IPC_EXCL | 0600);
        CHECK(s >= 0, "semget: %s", strerror(errno));
        struct sembuf op = { .sem_num = 0, .sem_op = 1, .sem_flg = SEM_UNDO };
        CHECK(semop(s, &op, 1) == 0, "semop: %s", strerror(errno));
        say("ids sem=%d", s);
        say("ready");
        wait_for_file(go, 5);
        semctl(s, 0, IPC_RMID);
        say("undo done");
        return 0;
    }
    if (strcmp(argv[1], "private") == 0) {
        int q = msgget(IPC_PRIVATE, 0600);
        CHECK(q >= 0, "msgget: %s", strerror(errno));
        put(q, 5, "private", 7);
        int m = shmget(IPC_PRIVATE, 2 * PAGE, 0600);
        CHECK(m >= 0, "shmget: %s", strerror(errno));
        unsigned char *p = shmat(m, NULL, 0);
        CHECK(p != (void *)-1, "shmat: %s", strerror(errno));
        for (size_t k = 0; k < 2 * PAGE; k++)
            p[k] = pat(k);
        CHECK(shmctl(m, IPC_RMID, NULL) == 0, "IPC_RMID: %s", strerror(errno));
        say("ids msg=%d shm=%d addr=%p", q, m, (void *)p);
        say("ready");
        wait_for_file(go, 5);
        get(q, 5, "private", 7);
        for (size_t k = 0; k < 2 * PAGE; k++)
            CHECK(p[k] == pat(k), "shm byte %zu is %u, not %u", k, p[k], pat(k));
        struct shmid_ds ms;
        CHECK(shmctl(m, IPC_STAT, &ms) == 0, "shmctl %d: %s", m, strerror(errno));
        CHECK(ms.shm_perm.__key == IPC_PRIVATE && (ms.shm_perm.mode & SHM_DEST) &&
                  ms.shm_nattch == 1,
              "segment key %#x mode %o nattch %lu", ms.shm_perm.__key, ms.shm_perm.mode,
              (unsigned long)ms.shm_nattch);
        CHECK(shmdt(p) == 0, "shmdt: %s", strerror(errno));
        CHECK(shmctl(m, IPC_STAT, &ms) < 0 && errno == EINVAL,
              "the segment outlives its last detach");
        CHECK(msgctl(q, IPC_RMID, NULL) == 0, "IPC_RMID queue: %s", strerror(errno));
        say("private ok");
        return 0;
    }
    if (strcmp(argv[1], "pair") == 0) {
        int q = msgget(key_of(0), IPC_CREAT | IPC_EXCL | 0600);
        CHECK(q >= 0, "msgget: %s", strerror(errno));
        int m = shmget(key_of(2), SHM_SIZE, IPC_CREAT | IPC_EXCL | 0600);
        CHECK(m >= 0, "shmget: %s", strerror(errno));
        unsigned char *p = shmat(m, NULL, 0);
        CHECK(p != (void *)-1, "shmat: %s", strerror(errno));
        memset(p, 0x11, SHM_SIZE);
        pid_t c = fork();
        CHECK(c >= 0, "fork: %s", strerror(errno));
        if (c == 0) {
            put(q, 2, "child", 5);
            wait_for_file(go, 5);
            p[100] = 0x77;
            put(q, 3, "done", 4);
            struct msg ack;
            while (msgrcv(q, &ack, sizeof ack.text, 4, 0) < 0)
                CHECK(errno == EINTR, "child msgrcv: %s", strerror(errno));
            _exit(0);
        }
        struct msqid_ds qs;
        do {
            sleep_ms(2);
            CHECK(msgctl(q, IPC_STAT, &qs) == 0, "msgctl: %s", strerror(errno));
        } while (qs.msg_qnum < 1);
        say("ids msg=%d shm=%d child=%d", q, m, (int)c);
        say("ready");
        struct msg got;
        while (msgrcv(q, &got, sizeof got.text, 3, 0) < 0)
            CHECK(errno == EINTR, "msgrcv: %s", strerror(errno));
        CHECK(p[100] == 0x77 && p[99] == 0x11, "the child's write does not show (%#x)", p[100]);
        get(q, 2, "child", 5);
        struct shmid_ds ms;
        CHECK(shmctl(m, IPC_STAT, &ms) == 0, "shmctl: %s", strerror(errno));
        put(q, 4, "ack", 3);
        int st;
        CHECK(waitpid(c, &st, 0) == c && WIFEXITED(st) && WEXITSTATUS(st) == 0,
              "child status %#x", st);
        CHECK(ms.shm_nattch == 2, "nattch %lu", (unsigned long)ms.shm_nattch);
        CHECK(msgctl(q, IPC_RMID, NULL) == 0, "IPC_RMID queue: %s", strerror(errno));
        CHECK(shmctl(m, IPC_RMID, NULL) == 0, "IPC_RMID shm: %s", strerror(errno));
        say("pair ok");
        return 0;
    }
    if (strcmp(argv[1], "hold") != 0)
        fail("unknown mode %s", argv[1]);

    unsigned char b[300];
    for (int k = 0; k < 300; k++)
        b[k] = bin(k);
    int q = msgget(key_of(0), IPC_CREAT | IPC_EXCL | 0640);
    CHECK(q >= 0, "msgget: %s", strerror(errno));
    put(q, 1, "one", 3);
    put(q, 7, b, sizeof b);
    put(q, 1, "three", 5);

    int s = semget(key_of(1), 3, IPC_CREAT | IPC_EXCL | 0660);
    CHECK(s >= 0, "semget: %s", strerror(errno));
    unsigned short init[3] = { 5, 0, 42 };
    CHECK(semctl(s, 0, SETALL, (union semun){ .array = init }) == 0, "SETALL: %s",
          strerror(errno));
    struct sembuf op = { .sem_num = 1, .sem_op = 7, .sem_flg = 0 };
    CHECK(semop(s, &op, 1) == 0, "semop: %s", strerror(errno));

    int m = shmget(key_of(2), SHM_SIZE, IPC_CREAT | IPC_EXCL | 0600);
    CHECK(m >= 0, "shmget: %s", strerror(errno));
    unsigned char *p = shmat(m, NULL, 0);
    CHECK(p != (void *)-1, "shmat: %s", strerror(errno));
    for (size_t k = 0; k < SHM_SIZE; k++)
        p[k] = pat(k);

    say("ids msg=%d sem=%d shm=%d addr=%p", q, s, m, (void *)p);
    say("ready");
    wait_for_file(go, 5);

    /* The message queue. */
    struct msqid_ds qs;
    CHECK(msgctl(q, IPC_STAT, &qs) == 0, "msgctl %d: %s", q, strerror(errno));
    CHECK(qs.msg_perm.__key == key_of(0), "queue key %#x", qs.msg_perm.__key);
    CHECK((qs.msg_perm.mode & 0777) == 0640, "queue mode %o", qs.msg_perm.mode);
    CHECK(qs.msg_qnum == 3, "queue holds %lu messages", (unsigned long)qs.msg_qnum);
    get(q, 1, "one", 3);
    get(q, 7, b, sizeof b);
    get(q, 1, "three", 5);

    /* The semaphores. */
    struct semid_ds ss;
    CHECK(semctl(s, 0, IPC_STAT, (union semun){ .buf = &ss }) == 0, "semctl %d: %s", s,
          strerror(errno));
    CHECK(ss.sem_perm.__key == key_of(1), "sem key %#x", ss.sem_perm.__key);
    CHECK((ss.sem_perm.mode & 0777) == 0660, "sem mode %o", ss.sem_perm.mode);
    CHECK(ss.sem_nsems == 3, "sem set of %lu", (unsigned long)ss.sem_nsems);
    unsigned short v[3];
    CHECK(semctl(s, 0, GETALL, (union semun){ .array = v }) == 0, "GETALL: %s",
          strerror(errno));
    CHECK(v[0] == 5 && v[1] == 7 && v[2] == 42, "semaphores %u %u %u", v[0], v[1], v[2]);
    op.sem_op = -7;
    CHECK(semop(s, &op, 1) == 0, "semop: %s", strerror(errno));

    /* The segment. */
    struct shmid_ds ms;
    CHECK(shmctl(m, IPC_STAT, &ms) == 0, "shmctl %d: %s", m, strerror(errno));
    CHECK(ms.shm_perm.__key == key_of(2), "shm key %#x", ms.shm_perm.__key);
    CHECK((ms.shm_perm.mode & 0777) == 0600, "shm mode %o", ms.shm_perm.mode);
    CHECK(ms.shm_segsz == SHM_SIZE, "shm size %zu", (size_t)ms.shm_segsz);
    CHECK(ms.shm_nattch == 1, "shm attached %lu times", (unsigned long)ms.shm_nattch);
    for (size_t k = 0; k < SHM_SIZE; k++)
        CHECK(p[k] == pat(k), "shm byte %zu is %u, not %u", k, p[k], pat(k));
    FILE *maps = fopen("/proc/self/maps", "r");
    CHECK(maps, "maps: %s", strerror(errno));
    char line[512];
    int found = 0;
    while (fgets(line, sizeof line, maps)) {
        unsigned long lo, hi, ino;
        char name[256] = "";
        if (sscanf(line, "%lx-%lx %*s %*s %*s %lu %255s", &lo, &hi, &ino, name) < 3)
            continue;
        if (lo == (unsigned long)p) {
            char want[64];
            snprintf(want, sizeof want, "/SYSV%08x", key_of(2));
            CHECK(strcmp(name, want) == 0 && ino == (unsigned long)m,
                  "the mapping at %p is %s inode %lu, not %s inode %d", (void *)p, name, ino,
                  want, m);
            CHECK(hi - lo == 4 * PAGE, "the mapping at %p is %lu bytes", (void *)p, hi - lo);
            found = 1;
        }
    }
    fclose(maps);
    CHECK(found, "nothing mapped at %p", (void *)p);
    unsigned char *p2 = shmat(m, NULL, 0);
    CHECK(p2 != (void *)-1, "second shmat: %s", strerror(errno));
    p2[10] = 0xa5;
    CHECK(p[10] == 0xa5, "a write through a second attachment does not show in the first");
    CHECK(shmctl(m, IPC_STAT, &ms) == 0 && ms.shm_nattch == 2, "nattch %lu",
          (unsigned long)ms.shm_nattch);

    CHECK(msgctl(q, IPC_RMID, NULL) == 0, "IPC_RMID queue: %s", strerror(errno));
    CHECK(semctl(s, 0, IPC_RMID) == 0, "IPC_RMID sem: %s", strerror(errno));
    CHECK(shmctl(m, IPC_RMID, NULL) == 0, "IPC_RMID shm: %s", strerror(errno));
    say("sysvipc ok");
    return 0;
}

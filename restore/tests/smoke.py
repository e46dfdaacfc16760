#!/usr/bin/env python3
"""Standalone smoke test of the restore loader (ckpt-restore), without the front end.

Usage: python3 restore/tests/smoke.py <path-to-ckpt-restore>   (as root: clone3 set_tid)

It builds an image file and a plan (layout: the ckpt-plan crate, plan/src/lib.rs), forks a child that
execs the loader with them, and checks the parked result through /proc: memory regions
and their contents, the vdso pieces at the planned addresses, two threads with the
planned TIDs and names, the rseq registration, the signal handler, the mm fields, the
auxv and the closed descriptors. Then two plans that must fail: overlapping regions
(refused by the plan checks, stage PLAN) and a thread whose TID is taken (stage THREAD).
Exit status 0 when everything passed.
"""

import os
import select
import signal
import struct
import sys
import tempfile
import time

PAGE = 4096

PLAN_MAGIC = int.from_bytes(b"CKPTPLAN", "little")
READY_MAGIC = int.from_bytes(b"CKPTRDY!", "little")
PLAN_VERSION = 2

VMA_ANON_PRIVATE, VMA_ANON_SHARED, VMA_FILE_PRIVATE, VMA_FILE_SHARED = 0, 1, 2, 3
VMA_VVAR, VMA_VVAR_VCLOCK, VMA_VDSO = 4, 5, 6
VMA_F_GROWSDOWN = 1
PROT_NONE, PROT_READ, PROT_WRITE, PROT_EXEC = 0, 1, 2, 4

STAGE_DONE, STAGE_PLAN, STAGE_MAP, STAGE_THREAD = 0, 1, 4, 9
EEXIST, EINVAL = 17, 22

HEADER_FMT = "<4Q12Q2q11Q16Q" # PlanHeader (with PrctlMmMap, then forks and fork setup: unused here)
VMA_FMT = "<QQIIIiQQQ"         # PlanVma
RUN_FMT = "<3Q"                # PlanRun
THREAD_FMT = "<10Q16s"         # PlanThread
SIGACTION_FMT = "<5Q"          # PlanSigaction
READY_FMT = "<6Q80s"           # Ready

assert struct.calcsize(HEADER_FMT) == 360
assert struct.calcsize(VMA_FMT) == 56
assert struct.calcsize(THREAD_FMT) == 96
assert struct.calcsize(READY_FMT) == 128

# Where the test puts things (all outside the loader zone 0x3ff000000000..0x3ff200000000).
A = 0x10000000          # anon private rw, 16 pages, two runs; also data area
B = 0x10100000          # anon PROT_NONE, 4 pages
C = 0x10200000          # private file mapping of SAMPLE_FILE, 2 pages, page 1 written
D = 0x10300000          # heap (brk area), 4 pages
E = 0x10400000          # stack (growsdown), 8 pages
VDSO_BASE = 0x7E0000000000
SAMPLE_FILE = "/etc/services"

RSEQ_ADDR = A + 0x9000 + 0x100   # inside run 2, 32-byte aligned
RSEQ_SIG = 0x53053053
ALTSTACK = (A + 0xC000, 2 * PAGE)
SIGUSR1 = 10
SA_SIGINFO, SA_RESTORER = 0x4, 0x04000000

# Descriptor numbers in the loader process.
FDS = {"status": 100, "image": 101, "file": 102, "extra": 103, "plan": 104}

failures = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        failures.append(what)
    return cond


def pattern(i):
    """Content of image page i: easy to recognise, different for every page."""
    return bytes(((i * 37 + j * 7) % 251) + 1 for j in range(PAGE))


def own_vdso_pieces():
    """(name, start, end) of this process's vdso pieces: same kernel, same sizes."""
    pieces = []
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 6 and parts[5] in ("[vvar]", "[vvar_vclock]", "[vdso]"):
                s, e = (int(x, 16) for x in parts[0].split("-"))
                pieces.append((parts[5], s, e))
    return pieces


def free_tid():
    """A TID well above the last one handed out and not in use."""
    last = int(open("/proc/sys/kernel/ns_last_pid").read())
    pid_max = int(open("/proc/sys/kernel/pid_max").read())
    cand = last + 500
    for _ in range(pid_max):
        if cand >= pid_max:
            cand = 300
        if not os.path.exists(f"/proc/{cand}"):
            return cand
        cand += 1
    raise RuntimeError("no free tid")


class PlanBuilder:
    def __init__(self):
        self.vmas = []      # (start, end, prot, kind, flags, fd, offset, runs)
        self.threads = []
        self.sigactions = []
        self.auxv = []
        self.close_fds = []
        self.mm = [0] * 11

    def vma(self, start, end, prot, kind, flags=0, fd=-1, offset=0, runs=()):
        self.vmas.append((start, end, prot, kind, flags, fd, offset, list(runs)))

    def thread(self, tid, name, robust=(0, 0), ctid=0, rseq=(0, 0, 0), ss=(0, 2, 0)):
        self.threads.append(struct.pack(THREAD_FMT, tid, robust[0], robust[1], ctid,
                                        rseq[0], rseq[1], rseq[2], ss[0], ss[1], ss[2],
                                        name.encode()[:16]))

    def build(self, pid, image_fd, status_fd):
        vmas, runs = [], []
        for (start, end, prot, kind, flags, fd, offset, vruns) in sorted(self.vmas):
            vmas.append(struct.pack(VMA_FMT, start, end, prot, kind, flags, fd, offset,
                                    len(runs), len(vruns)))
            runs += [struct.pack(RUN_FMT, *r) for r in vruns]
        sections = [b"".join(vmas), b"".join(runs), b"".join(self.threads),
                    b"".join(struct.pack(SIGACTION_FMT, *s) for s in self.sigactions),
                    b"".join(struct.pack("<Q", w) for w in self.auxv),
                    b"".join(struct.pack("<i", fd) for fd in self.close_fds)]
        counts = [len(vmas), len(runs), len(self.threads), len(self.sigactions),
                  len(self.auxv), len(self.close_fds)]
        off = struct.calcsize(HEADER_FMT)
        body, offs = b"", []
        for s in sections:
            offs.append(off + len(body))
            body += s + b"\0" * (-len(s) % 8)
        size = off + len(body)
        fields = []
        for o, n in zip(offs, counts):
            fields += [o, n]
        hdr = struct.pack(HEADER_FMT, PLAN_MAGIC, PLAN_VERSION, size, pid, *fields,
                          image_fd, status_fd, *self.mm, *([0] * 16))
        return hdr + body


def make_plan(kind, pid, fds, tid, pieces):
    """The plan for one scenario ("good", "overlap", "tid_taken")."""
    p = PlanBuilder()
    p.vma(A, A + 16 * PAGE, PROT_READ | PROT_WRITE, VMA_ANON_PRIVATE,
          runs=[(A, 2 * PAGE, 0), (A + 0x8000, 3 * PAGE, 2 * PAGE)])
    p.vma(B, B + 4 * PAGE, PROT_NONE, VMA_ANON_PRIVATE)
    p.vma(C, C + 2 * PAGE, PROT_READ, VMA_FILE_PRIVATE, fd=fds["file"], offset=0,
          runs=[(C + PAGE, PAGE, 5 * PAGE)])
    p.vma(D, D + 4 * PAGE, PROT_READ | PROT_WRITE, VMA_ANON_PRIVATE, runs=[(D, PAGE, 6 * PAGE)])
    p.vma(E, E + 8 * PAGE, PROT_READ | PROT_WRITE, VMA_ANON_PRIVATE, flags=VMA_F_GROWSDOWN,
          runs=[(E + 6 * PAGE, 2 * PAGE, 7 * PAGE)])
    if kind == "overlap":
        p.vma(A + 4 * PAGE, A + 6 * PAGE, PROT_READ, VMA_ANON_PRIVATE)
    base = min(s for _, s, _ in pieces)
    kinds = {"[vvar]": VMA_VVAR, "[vvar_vclock]": VMA_VVAR_VCLOCK, "[vdso]": VMA_VDSO}
    for name, s, e in pieces:
        p.vma(VDSO_BASE + (s - base), VDSO_BASE + (e - base), PROT_READ, kinds[name])

    p.thread(pid, "smoke-main", robust=(A + 0x100, 24), ctid=A + 0x200)
    p.thread(1 if kind == "tid_taken" else tid, "smoke-worker", robust=(A + 0x300, 24),
             ctid=A + 0x400, rseq=(RSEQ_ADDR, 32, RSEQ_SIG), ss=(ALTSTACK[0], 0, ALTSTACK[1]))
    p.sigactions.append((SIGUSR1, A + 0x500, SA_SIGINFO | SA_RESTORER, A + 0x600, 1 << (SIGUSR1 - 1)))
    p.auxv = [6, PAGE, 25, E + 7 * PAGE, 0, 0]   # AT_PAGESZ, AT_RANDOM, AT_NULL
    p.mm = [C, C + 2 * PAGE,                     # code
            A, A + 16 * PAGE,                    # data
            D, D + 2 * PAGE,                     # start_brk, brk
            E + 7 * PAGE,                        # start_stack
            E + 7 * PAGE + 0x100, E + 7 * PAGE + 0x200,   # args
            E + 7 * PAGE + 0x200, E + 7 * PAGE + 0x300]   # env
    p.close_fds = [fds["file"], fds["extra"]]
    return p.build(pid, fds["image"], fds["status"])


def spawn(loader, kind, image_path, tid, pieces):
    """Forks a child that execs the loader with a plan of `kind`. Returns (pid, status read end)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            opened = {
                "status": w,
                "image": os.open(image_path, os.O_RDONLY),
                "file": os.open(SAMPLE_FILE, os.O_RDONLY),
                "extra": os.open("/dev/null", os.O_RDONLY),
                "plan": os.memfd_create("plan", 0),
            }
            fds = {}
            for name, fd in opened.items():   # at the known numbers FDS[name]
                os.dup2(fd, FDS[name], inheritable=True)
                os.close(fd)
                fds[name] = FDS[name]
            os.write(fds["plan"], make_plan(kind, os.getpid(), fds, tid, pieces))
            os.execv(loader, [loader, str(fds["plan"])])
        except BaseException as e:  # noqa: BLE001 - report anything, never return
            print("child setup failed:", e, file=sys.stderr)
        os._exit(99)
    os.close(w)
    return pid, r


def read_ready(r, timeout=20.0):
    data = b""
    deadline = time.time() + timeout
    while len(data) < 128 and time.time() < deadline:
        ready, _, _ = select.select([r], [], [], max(0.0, deadline - time.time()))
        if not ready:
            break
        chunk = os.read(r, 128 - len(data))
        if not chunk:
            break
        data += chunk
    if len(data) != 128:
        return None
    magic, error, stage, addr, lstart, lend, msg = struct.unpack(READY_FMT, data)
    return dict(magic=magic, error=error, stage=stage, addr=addr, loader_start=lstart,
                loader_end=lend, msg=msg.rstrip(b"\0").decode(errors="replace"))


def proc_maps(pid):
    out = {}
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.split(None, 5)
            s, e = (int(x, 16) for x in parts[0].split("-"))
            out[s] = (e, parts[1], parts[5].strip() if len(parts) > 5 else "")
    return out


def read_mem(pid, addr, n):
    with open(f"/proc/{pid}/mem", "rb") as f:
        f.seek(addr)
        return f.read(n)


def wait_parked(pid, tids, timeout=5.0):
    """Waits until every thread sleeps in pause() (syscall 34)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if all(open(f"/proc/{pid}/task/{t}/syscall").read().split()[0] == "34" for t in tids):
                return True
        except OSError:
            pass
        time.sleep(0.02)
    return False


def kill(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    os.waitpid(pid, 0)


def test_good(loader, image_path, image, pieces):
    print("== restore of a good plan")
    tid = free_tid()
    pid, r = spawn(loader, "good", image_path, tid, pieces)
    try:
        ready = read_ready(r)
        if not check(ready is not None, "a Ready record arrives"):
            return
        check(ready["magic"] == READY_MAGIC, "Ready magic")
        if not check(ready["error"] == 0 and ready["stage"] == STAGE_DONE,
                     f"Ready reports success (error={ready['error']} stage={ready['stage']} "
                     f"addr={ready['addr']:#x} msg={ready['msg']!r})"):
            return
        check((ready["loader_start"], ready["loader_end"]) == (0x3FF000000000, 0x3FF200000000),
              "Ready gives the loader zone")

        tasks = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
        check(tasks == sorted([pid, tid]), f"two threads with TIDs {pid} and {tid} (got {tasks})")
        check(wait_parked(pid, tasks), "every thread is parked in pause()")
        comm = {t: open(f"/proc/{pid}/task/{t}/comm").read().strip() for t in tasks}
        check(comm.get(pid) == "smoke-main" and comm.get(tid) == "smoke-worker",
              f"thread names restored ({comm})")

        maps = proc_maps(pid)
        expect = [(A, A + 16 * PAGE, "rw-p", ""), (B, B + 4 * PAGE, "---p", ""),
                  (C, C + 2 * PAGE, "r--p", SAMPLE_FILE), (D, D + 4 * PAGE, "rw-p", "[heap]"),
                  (E, E + 8 * PAGE, "rw-p", "[stack]")]
        for s, e, perms, name in expect:
            got = maps.get(s)
            check(got == (e, perms, name), f"region {s:#x}-{e:#x} {perms} {name!r} (got {got})")
        base = min(s for _, s, _ in pieces)
        for name, s, e in pieces:
            at = VDSO_BASE + (s - base)
            got = maps.get(at)
            check(got is not None and got[0] == at + (e - s) and got[2] == name,
                  f"{name} moved to {at:#x} (got {got})")
        outside = [(s, v) for s, v in maps.items()
                   if not (0x3FF000000000 <= s < 0x3FF200000000)
                   and s not in [x[0] for x in expect]
                   and v[2] not in ("[vvar]", "[vvar_vclock]", "[vdso]", "[vsyscall]")]
        check(not outside, f"nothing else is mapped outside the loader zone ({outside})")

        mem_a = read_mem(pid, A, 16 * PAGE)
        want_a = bytearray(16 * PAGE)
        want_a[0:2 * PAGE] = image[0:2 * PAGE]
        want_a[0x8000:0x8000 + 3 * PAGE] = image[2 * PAGE:5 * PAGE]
        # The kernel rewrites cpu_id_start/cpu_id/node_id/mm_cid of a registered rseq area.
        ro = RSEQ_ADDR - A
        cpu_id = struct.unpack_from("<I", mem_a, ro + 4)[0]
        check(cpu_id < os.cpu_count() and cpu_id != struct.unpack_from("<I", want_a, ro + 4)[0],
              f"rseq registered (kernel wrote cpu_id={cpu_id} into the area)")
        mem_a = bytearray(mem_a)
        for lo, hi in ((0, 8), (20, 28)):
            mem_a[ro + lo:ro + hi] = want_a[ro + lo:ro + hi]
        diff = [hex(i) for i in range(len(want_a)) if mem_a[i] != want_a[i]][:16]
        check(not diff, f"anonymous region holds its two runs and zeros elsewhere (differs at {diff})")
        with open(SAMPLE_FILE, "rb") as f:
            file_page0 = f.read(PAGE)
        check(read_mem(pid, C, PAGE) == file_page0, "file mapping page 0 comes from the file")
        check(read_mem(pid, C + PAGE, PAGE) == image[5 * PAGE:6 * PAGE],
              "file mapping page 1 comes from the image")
        check(read_mem(pid, D, 2 * PAGE) == image[6 * PAGE:7 * PAGE] + bytes(PAGE), "heap content")
        check(read_mem(pid, E + 6 * PAGE, 2 * PAGE) == image[7 * PAGE:9 * PAGE], "stack content")

        status = dict(l.split(":", 1) for l in open(f"/proc/{pid}/status").read().splitlines() if ":" in l)
        sigcgt = int(status["SigCgt"].strip(), 16)
        check(sigcgt == 1 << (SIGUSR1 - 1), f"SigCgt has exactly SIGUSR1 ({sigcgt:#x})")
        check(int(status["SigBlk"].strip(), 16) != 0, "signals are blocked while parked")

        stat = open(f"/proc/{pid}/stat").read()
        f = stat[stat.rindex(")") + 2:].split()
        field = lambda n: int(f[n - 3])  # noqa: E731 - proc(5) numbering
        got_mm = [field(26), field(27), field(45), field(46), field(47), field(28),
                  field(48), field(49), field(50), field(51)]
        want_mm = [C, C + 2 * PAGE, A, A + 16 * PAGE, D, E + 7 * PAGE,
                   E + 7 * PAGE + 0x100, E + 7 * PAGE + 0x200, E + 7 * PAGE + 0x200, E + 7 * PAGE + 0x300]
        check(got_mm == want_mm, "mm fields (code, data, brk, stack, args, env) restored")
        auxv = open(f"/proc/{pid}/auxv", "rb").read()
        words = struct.unpack(f"<{len(auxv) // 8}Q", auxv)
        check(list(words[:6]) == [6, PAGE, 25, E + 7 * PAGE, 0, 0], "auxv restored")

        fds = set(int(x) for x in os.listdir(f"/proc/{pid}/fd"))
        left = fds & {FDS["image"], FDS["file"], FDS["extra"], FDS["plan"]}
        check(not left, f"plan, image and listed descriptors are closed (left: {sorted(left)})")
        check(FDS["status"] in fds, "status pipe stays open")
    finally:
        kill(pid)
        os.close(r)


def test_failure(loader, image_path, kind, want_stage, want_errno, pieces):
    print(f"== plan that must fail: {kind}")
    pid, r = spawn(loader, kind, image_path, free_tid(), pieces)
    try:
        ready = read_ready(r)
        if check(ready is not None, "a Ready record arrives"):
            check(ready["magic"] == READY_MAGIC, "Ready magic")
            check(ready["error"] == want_errno and ready["stage"] == want_stage,
                  f"error {want_errno} at stage {want_stage} (got error={ready['error']} "
                  f"stage={ready['stage']} addr={ready['addr']:#x} msg={ready['msg']!r})")
        _, status = os.waitpid(pid, 0)
        check(os.WIFEXITED(status) and os.WEXITSTATUS(status) == 127, f"exit status 127 (wait status {status:#x})")
    except BaseException:
        kill(pid)
        raise
    finally:
        os.close(r)


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    loader = os.path.abspath(sys.argv[1])
    if not os.access(loader, os.X_OK):
        print(f"not an executable: {loader}", file=sys.stderr)
        return 2
    pieces = own_vdso_pieces()
    print("vdso pieces of this kernel:", [(n, hex(e - s)) for n, s, e in pieces])
    image = bytearray(b"".join(pattern(i) for i in range(9)))
    # A registered thread outside a critical section has rseq_cs == 0 (the kernel reads it
    # on every return to user space and clears a stale one).
    rseq_in_image = 2 * PAGE + (RSEQ_ADDR - (A + 0x8000))
    image[rseq_in_image + 8:rseq_in_image + 16] = bytes(8)
    image = bytes(image)
    with tempfile.NamedTemporaryFile(prefix="ckpt-smoke-image-") as img:
        img.write(image)
        img.flush()
        test_good(loader, img.name, image, pieces)
        test_failure(loader, img.name, "overlap", STAGE_PLAN, EINVAL, pieces)
        test_failure(loader, img.name, "tid_taken", STAGE_THREAD, EEXIST, pieces)
    print(f"{'FAILED' if failures else 'PASSED'}: {len(failures)} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

//! Raw Linux x86-64 system calls (no libc) and the few constants the loader uses.
//!
//! Every wrapper returns `Result<usize, Errno>` where the error is the positive errno.
//! Nothing here allocates or touches memory other than what the caller passes.

use core::arch::asm;

/// A positive errno value.
pub type Errno = u64;

pub const ENOENT: Errno = 2;
pub const ESRCH: Errno = 3;
pub const EIO: Errno = 5;
pub const EEXIST: Errno = 17;
pub const EINVAL: Errno = 22;
pub const ERANGE: Errno = 34;
pub const ENOTRECOVERABLE: Errno = 131;

// System call numbers.
const SYS_READ: usize = 0;
const SYS_WRITE: usize = 1;
const SYS_CLOSE: usize = 3;
const SYS_FSTAT: usize = 5;
const SYS_MMAP: usize = 9;
const SYS_MPROTECT: usize = 10;
const SYS_MUNMAP: usize = 11;
const SYS_RT_SIGACTION: usize = 13;
const SYS_RT_SIGPROCMASK: usize = 14;
const SYS_PREAD64: usize = 17;
const SYS_MREMAP: usize = 25;
const SYS_SHMAT: usize = 30;
const SYS_PAUSE: usize = 34;
const SYS_GETPID: usize = 39;
const SYS_SIGALTSTACK: usize = 131;
const SYS_PRCTL: usize = 157;
const SYS_FUTEX: usize = 202;
const SYS_SET_TID_ADDRESS: usize = 218;
const SYS_EXIT_GROUP: usize = 231;
const SYS_OPENAT: usize = 257;
const SYS_SET_ROBUST_LIST: usize = 273;
const SYS_RSEQ: usize = 334;
const SYS_MADVISE: usize = 28;
const SYS_DUP2: usize = 33;
const SYS_CHDIR: usize = 80;
const SYS_UMASK: usize = 95;
const SYS_GETPPID: usize = 110;
const SYS_SETPGID: usize = 109;
const SYS_SETSID: usize = 112;
const SYS_PERSONALITY: usize = 135;
const SYS_PRLIMIT64: usize = 302;
const SYS_CLOSE_RANGE: usize = 436;
pub const SYS_CLONE3: usize = 435;

pub const PROT_READ: u32 = 1;
pub const PROT_WRITE: u32 = 2;

pub const MAP_SHARED: u32 = 0x01;
pub const MAP_PRIVATE: u32 = 0x02;
pub const MAP_ANONYMOUS: u32 = 0x20;
pub const MAP_GROWSDOWN: u32 = 0x100;
pub const MAP_FIXED_NOREPLACE: u32 = 0x10_0000;

pub const SHM_RDONLY: u32 = 0o10000;

pub const MREMAP_MAYMOVE: u32 = 1;
pub const MREMAP_FIXED: u32 = 2;

pub const O_RDONLY: u32 = 0;
pub const O_CLOEXEC: u32 = 0o2_000_000;
const AT_FDCWD: isize = -100;

pub const SIG_SETMASK: usize = 2;

pub const PR_SET_NAME: usize = 15;
pub const PR_SET_MM: usize = 35;
pub const PR_SET_MM_MAP: usize = 14;
pub const PR_SET_PDEATHSIG: usize = 1;
pub const SIGKILL: usize = 9;
pub const SIGCHLD: u64 = 17;
pub const MADV_DONTNEED: usize = 4;

pub const SS_DISABLE: u64 = 2;

const FUTEX_WAIT_PRIVATE: usize = 128;
const FUTEX_WAKE_PRIVATE: usize = 1 | 128;

/// The raw `syscall` instruction: number in rax, arguments in rdi, rsi, rdx, r10, r8, r9;
/// the kernel clobbers rcx and r11 and returns in rax.
///
/// # Safety
/// The kernel dereferences whatever the arguments of syscall `n` say are pointers and may
/// change this process's memory map, signal state or existence: the caller guarantees
/// that every pointer argument is valid for the access syscall `n` makes through it (and
/// for as long as the kernel keeps it), and that the call does not unmap, remap or write
/// memory Rust code still uses.
#[inline(always)]
unsafe fn syscall6(
    n: usize,
    a1: usize,
    a2: usize,
    a3: usize,
    a4: usize,
    a5: usize,
    a6: usize,
) -> isize {
    let ret: isize;
    asm!(
        "syscall",
        inlateout("rax") n as isize => ret,
        in("rdi") a1, in("rsi") a2, in("rdx") a3, in("r10") a4, in("r8") a5, in("r9") a6,
        lateout("rcx") _, lateout("r11") _,
        options(nostack),
    );
    ret
}

/// [`syscall6`] with the kernel's `-4095..0` error convention decoded into an errno.
///
/// # Safety
/// As for [`syscall6`].
#[inline(always)]
unsafe fn sys(
    n: usize,
    a1: usize,
    a2: usize,
    a3: usize,
    a4: usize,
    a5: usize,
    a6: usize,
) -> Result<usize, Errno> {
    let ret = syscall6(n, a1, a2, a3, a4, a5, a6);
    if (-4095..0).contains(&ret) {
        Err((-ret) as Errno)
    } else {
        Ok(ret as usize)
    }
}

pub fn read(fd: i32, buf: &mut [u8]) -> Result<usize, Errno> {
    // SAFETY: read(2) writes at most `buf.len()` bytes at `buf.as_mut_ptr()`, and `buf` is
    // an exclusive borrow valid for writes of exactly that many bytes; any byte is a valid
    // u8. No other argument is a pointer.
    unsafe {
        sys(
            SYS_READ,
            fd as usize,
            buf.as_mut_ptr() as usize,
            buf.len(),
            0,
            0,
            0,
        )
    }
}

pub fn write(fd: i32, buf: &[u8]) -> Result<usize, Errno> {
    // SAFETY: write(2) only reads `buf.len()` bytes at `buf.as_ptr()`, which the shared
    // borrow `buf` keeps valid for the whole call. No other argument is a pointer.
    unsafe {
        sys(
            SYS_WRITE,
            fd as usize,
            buf.as_ptr() as usize,
            buf.len(),
            0,
            0,
            0,
        )
    }
}

/// pread64 into arbitrary memory (the destination is usually a freshly mapped region).
///
/// # Safety
/// `[addr, addr+len)` must be writable memory that nothing in the loader uses.
pub unsafe fn pread_raw(fd: i32, addr: u64, len: u64, off: u64) -> Result<usize, Errno> {
    sys(
        SYS_PREAD64,
        fd as usize,
        addr as usize,
        len as usize,
        off as usize,
        0,
        0,
    )
}

/// shmat(2) of SysV segment `shmid` at exactly `addr` (page-aligned: no SHM_RND); returns
/// the address.
///
/// # Safety
/// Like mmap with MAP_FIXED: nothing the loader uses may lie in the range the segment
/// covers from `addr` (shmat replaces nothing without SHM_REMAP, it fails with EINVAL).
pub unsafe fn shmat(shmid: i32, addr: u64, flags: u32) -> Result<u64, Errno> {
    sys(
        SYS_SHMAT,
        shmid as usize,
        addr as usize,
        flags as usize,
        0,
        0,
        0,
    )
    .map(|a| a as u64)
}

/// `path` must be NUL-terminated.
pub fn open(path: &[u8], flags: u32) -> Result<i32, Errno> {
    debug_assert!(path.last() == Some(&0));
    // SAFETY: openat(2) only reads the path, from `path.as_ptr()` up to its first NUL; the
    // borrow keeps `path` valid for the call, and the caller's NUL terminator (documented
    // above, checked only in debug builds: every caller passes a `b"...\0"` literal) keeps
    // that read inside the slice. The kernel keeps no pointer after the call.
    unsafe {
        sys(
            SYS_OPENAT,
            AT_FDCWD as usize,
            path.as_ptr() as usize,
            flags as usize,
            0,
            0,
            0,
        )
        .map(|fd| fd as i32)
    }
}

pub fn close(fd: i32) -> Result<usize, Errno> {
    // SAFETY: close(2) takes no pointer and touches no memory of this process; the loader
    // holds descriptors as plain integers, so no Rust object owns `fd`.
    unsafe { sys(SYS_CLOSE, fd as usize, 0, 0, 0, 0, 0) }
}

/// Size in bytes of the file behind `fd` (`st_size` of fstat).
pub fn file_size(fd: i32) -> Result<u64, Errno> {
    // struct stat on x86-64 is 144 bytes; st_size is the i64 at offset 48.
    let mut st = [0u64; 18];
    // SAFETY: fstat(2) writes exactly one x86-64 `struct stat` (144 bytes) at its second
    // argument; `st` is a local, 8-aligned, 144-byte (18 * 8) buffer, and any bit pattern is
    // a valid u64.
    unsafe { sys(SYS_FSTAT, fd as usize, st.as_mut_ptr() as usize, 0, 0, 0, 0)? };
    Ok(st[6])
}

/// # Safety
/// Maps memory at a fixed address; the caller guarantees the address is meant for it.
pub unsafe fn mmap(
    addr: u64,
    len: u64,
    prot: u32,
    flags: u32,
    fd: i32,
    off: u64,
) -> Result<u64, Errno> {
    sys(
        SYS_MMAP,
        addr as usize,
        len as usize,
        prot as usize,
        flags as usize,
        fd as usize,
        off as usize,
    )
    .map(|a| a as u64)
}

/// # Safety
/// Nothing the loader still uses may live in the range.
pub unsafe fn munmap(addr: u64, len: u64) -> Result<usize, Errno> {
    sys(SYS_MUNMAP, addr as usize, len as usize, 0, 0, 0, 0)
}

/// # Safety
/// Moves a mapping; nothing the loader uses may live at either place.
pub unsafe fn mremap_fixed(old: u64, len: u64, new: u64) -> Result<u64, Errno> {
    sys(
        SYS_MREMAP,
        old as usize,
        len as usize,
        len as usize,
        (MREMAP_MAYMOVE | MREMAP_FIXED) as usize,
        new as usize,
        0,
    )
    .map(|a| a as u64)
}

/// # Safety
/// Nothing the loader uses may live in the range.
pub unsafe fn mprotect(addr: u64, len: u64, prot: u32) -> Result<usize, Errno> {
    sys(
        SYS_MPROTECT,
        addr as usize,
        len as usize,
        prot as usize,
        0,
        0,
        0,
    )
}

/// Sets the signal mask of the calling thread.
pub fn sigprocmask_set(mask: u64) -> Result<usize, Errno> {
    // SAFETY: rt_sigprocmask(2) reads one 8-byte sigset (sigsetsize = 8) at `&mask`, a
    // local that lives across the call; the old-set pointer is NULL, so nothing is written.
    // Changing the mask does not touch memory.
    unsafe {
        sys(
            SYS_RT_SIGPROCMASK,
            SIG_SETMASK,
            &mask as *const u64 as usize,
            0,
            8,
            0,
            0,
        )
    }
}

/// The kernel's x86-64 `struct sigaction` (as taken by rt_sigaction).
#[repr(C)]
pub struct KernelSigaction {
    pub handler: u64,
    pub flags: u64,
    pub restorer: u64,
    pub mask: u64,
}

pub fn rt_sigaction(signo: u64, act: &KernelSigaction) -> Result<usize, Errno> {
    // SAFETY: rt_sigaction(2) reads one kernel `struct sigaction` at `act`, which is a
    // borrowed repr(C) `KernelSigaction` with exactly the kernel's x86-64 layout (four u64:
    // handler, flags, restorer, mask; sigsetsize = 8); the old-action pointer is NULL, so
    // nothing is written. The handler and restorer addresses are not dereferenced now: they
    // only run when a signal is delivered, and the caller installs the restored image's own
    // handlers, which point into that image's code.
    unsafe {
        sys(
            SYS_RT_SIGACTION,
            signo as usize,
            act as *const _ as usize,
            0,
            8,
            0,
            0,
        )
    }
}

/// # Safety
/// prctl with pointer arguments: the caller passes valid pointers for `option`.
pub unsafe fn prctl(
    option: usize,
    a2: usize,
    a3: usize,
    a4: usize,
    a5: usize,
) -> Result<usize, Errno> {
    sys(SYS_PRCTL, option, a2, a3, a4, a5, 0)
}

pub fn getpid() -> u64 {
    // SAFETY: getpid(2) takes no argument and touches no memory.
    unsafe { syscall6(SYS_GETPID, 0, 0, 0, 0, 0, 0) as u64 }
}

/// Registers the robust futex list head of the calling thread (the address belongs to the
/// restored image; the kernel only stores it).
pub fn set_robust_list(head: u64, len: u64) -> Result<usize, Errno> {
    // SAFETY: set_robust_list(2) only records `head` and `len` for the calling thread; the
    // kernel walks the list only when the thread exits, and the caller passes the restored
    // image's own list head, which lives in image memory the loader does not use.
    unsafe { sys(SYS_SET_ROBUST_LIST, head as usize, len as usize, 0, 0, 0, 0) }
}

/// Sets clear_child_tid of the calling thread (only stored by the kernel).
pub fn set_tid_address(addr: u64) {
    // SAFETY: set_tid_address(2) only records `addr`; the kernel writes 0 there (and
    // futex-wakes it) when the thread exits. The caller passes the restored image's own
    // clear_child_tid word (or 0, which disables it), not loader memory.
    unsafe { syscall6(SYS_SET_TID_ADDRESS, addr as usize, 0, 0, 0, 0, 0) };
}

/// The kernel's `stack_t`.
#[repr(C)]
pub struct StackT {
    pub ss_sp: u64,
    pub ss_flags: i32,
    pub _pad: i32,
    pub ss_size: u64,
}

pub fn sigaltstack(ss: &StackT) -> Result<usize, Errno> {
    // SAFETY: sigaltstack(2) reads one kernel `stack_t` at `ss`, a borrowed repr(C)
    // `StackT` with the kernel's x86-64 layout (sp, flags + padding, size: 24 bytes); the
    // old-stack pointer is NULL. The stack itself is only written when a signal is
    // delivered on it, and the caller passes the restored image's own alternate stack.
    unsafe { sys(SYS_SIGALTSTACK, ss as *const _ as usize, 0, 0, 0, 0, 0) }
}

/// Registers an rseq area for the calling thread. The kernel writes into the area, which
/// must be mapped and writable.
pub fn rseq(addr: u64, len: u64, sig: u64) -> Result<usize, Errno> {
    // SAFETY: rseq(2) with flags 0 registers `[addr, addr+len)`; from then on the kernel
    // writes the cpu fields there on every return to user space. The caller passes the
    // restored image's own rseq area, which is mapped and writable in the rebuilt address
    // space and lies outside the loader's zone, so the writes never land in loader memory.
    unsafe { sys(SYS_RSEQ, addr as usize, len as usize, 0, sig as usize, 0, 0) }
}

/// Sleeps while `*word == expected` (spurious wake-ups possible; callers loop).
pub fn futex_wait(word: &core::sync::atomic::AtomicU32, expected: u32) {
    // SAFETY: FUTEX_WAIT only reads the aligned 4-byte word at `word.as_ptr()`, which the
    // borrow of an `AtomicU32` keeps valid (and which may be read concurrently); the
    // timeout pointer is NULL (wait forever), the other arguments are ignored.
    unsafe {
        syscall6(
            SYS_FUTEX,
            word.as_ptr() as usize,
            FUTEX_WAIT_PRIVATE,
            expected as usize,
            0,
            0,
            0,
        )
    };
}

pub fn futex_wake(word: &core::sync::atomic::AtomicU32, n: u32) {
    // SAFETY: FUTEX_WAKE uses the address of `word` only as a wait-queue key and reads or
    // writes no memory; the other arguments are ignored.
    unsafe {
        syscall6(
            SYS_FUTEX,
            word.as_ptr() as usize,
            FUTEX_WAKE_PRIVATE,
            n as usize,
            0,
            0,
            0,
        )
    };
}

pub fn pause() {
    // SAFETY: pause(2) takes no argument and touches no memory.
    unsafe { syscall6(SYS_PAUSE, 0, 0, 0, 0, 0, 0) };
}

pub fn exit_group(code: i32) -> ! {
    // SAFETY: exit_group(2) takes no pointer and ends every thread of the process, so it
    // never returns; the `ud2` after it is therefore unreachable, which is what its
    // `noreturn` option promises (and would trap rather than fall through if not).
    unsafe {
        syscall6(SYS_EXIT_GROUP, code as usize, 0, 0, 0, 0, 0);
        // exit_group does not return.
        asm!("ud2", options(noreturn));
    }
}

/// The kernel's `struct clone_args` up to `cgroup` (CLONE_ARGS_SIZE_VER2), for threads
/// (`threads.rs`) and forks ([`fork_with_pid`]).
#[repr(C)]
#[derive(Default)]
pub struct CloneArgs {
    pub flags: u64,
    pub pidfd: u64,
    pub child_tid: u64,
    pub parent_tid: u64,
    pub exit_signal: u64,
    pub stack: u64,
    pub stack_size: u64,
    pub tls: u64,
    pub set_tid: u64,
    pub set_tid_size: u64,
    pub cgroup: u64,
}

const _: () = assert!(core::mem::size_of::<CloneArgs>() == 88);

/// `clone3(args)` without CLONE_VM (`flags`: CLONE_FILES, CLONE_FS at most): a fork. Returns 0 in the child, its PID in the parent.
/// The child goes on from here on a copy of the caller's stack and memory.
pub fn fork_with_pid(pid: i32, flags: u64) -> Result<usize, Errno> {
    let tid = pid;
    let args = CloneArgs {
        flags,
        exit_signal: SIGCHLD,
        set_tid: &tid as *const i32 as u64,
        set_tid_size: 1,
        ..Default::default()
    };
    // SAFETY: clone3 reads `args` (a local of the size passed) and, through `set_tid`, one
    // i32 (`tid`, a live local). Without CLONE_VM the child runs on its own copy of the
    // address space, so returning into Rust code on both sides is sound.
    unsafe {
        sys(
            SYS_CLONE3,
            &args as *const CloneArgs as usize,
            core::mem::size_of::<CloneArgs>(),
            0,
            0,
            0,
            0,
        )
    }
}

/// # Safety
/// MADV_DONTNEED drops the pages of the range: nothing the loader uses may live there.
pub unsafe fn madvise(addr: u64, len: u64, advice: usize) -> Result<usize, Errno> {
    sys(SYS_MADVISE, addr as usize, len as usize, advice, 0, 0, 0)
}

pub fn dup2(src: i32, target: i32) -> Result<usize, Errno> {
    // SAFETY: dup2(2) takes two integers and touches no memory.
    unsafe { sys(SYS_DUP2, src as usize, target as usize, 0, 0, 0, 0) }
}

/// close_range(first, last, 0): closes every descriptor in `[first, last]`.
pub fn close_range(first: u32, last: u32) -> Result<usize, Errno> {
    // SAFETY: close_range(2) takes integers and touches no memory; the loader holds
    // descriptors as plain integers.
    unsafe { sys(SYS_CLOSE_RANGE, first as usize, last as usize, 0, 0, 0, 0) }
}

/// `path` must be NUL-terminated (checked by the plan validation for the forked cwd).
pub fn chdir(path: &[u8]) -> Result<usize, Errno> {
    if path.last() != Some(&0) {
        return Err(EINVAL);
    }
    // SAFETY: chdir(2) reads the path up to its NUL, which lies inside the borrowed slice.
    unsafe { sys(SYS_CHDIR, path.as_ptr() as usize, 0, 0, 0, 0, 0) }
}

pub fn umask(mask: u32) {
    // SAFETY: umask(2) takes an integer and cannot fail.
    unsafe { syscall6(SYS_UMASK, mask as usize, 0, 0, 0, 0, 0) };
}

pub fn getppid() -> u64 {
    // SAFETY: getppid(2) takes no argument and touches no memory.
    unsafe { syscall6(SYS_GETPPID, 0, 0, 0, 0, 0, 0) as u64 }
}

pub fn setsid() -> Result<usize, Errno> {
    // SAFETY: setsid(2) takes no argument and touches no memory.
    unsafe { sys(SYS_SETSID, 0, 0, 0, 0, 0, 0) }
}

pub fn setpgid(pid: i32, pgid: i32) -> Result<usize, Errno> {
    // SAFETY: setpgid(2) takes integers and touches no memory.
    unsafe { sys(SYS_SETPGID, pid as usize, pgid as usize, 0, 0, 0, 0) }
}

pub fn personality(p: u32) -> Result<usize, Errno> {
    // SAFETY: personality(2) takes an integer and touches no memory.
    unsafe { sys(SYS_PERSONALITY, p as usize, 0, 0, 0, 0, 0) }
}

/// prlimit64(0, resource, {cur, max}, NULL).
pub fn setrlimit(resource: u64, cur: u64, max: u64) -> Result<usize, Errno> {
    let lim = [cur, max];
    // SAFETY: prlimit64 reads one `struct rlimit64` (two u64: `lim`, a live local) and
    // writes nothing (the old-limit pointer is NULL).
    unsafe {
        sys(
            SYS_PRLIMIT64,
            0,
            resource as usize,
            lim.as_ptr() as usize,
            0,
            0,
            0,
        )
    }
}

//! Symbols the compiler expects from a runtime that does not exist here (no libc).
//!
//! - The memory primitives `memcpy`, `memmove`, `memset`, `memcmp`, `bcmp`, written in
//!   assembly so the optimizer cannot turn their bodies back into calls to themselves.
//! - `rust_eh_personality`: the prebuilt `core` refers to it even with `panic = "abort"`
//!   (unwinding never happens: the panic handler exits).

use core::arch::naked_asm;

/// `memcpy(3)`: copies `n` bytes from `src` to `dest`, returns `dest`.
///
/// # Safety
/// `dest` must be valid for writes and `src` for reads of `n` bytes, and the two ranges
/// must not overlap (as the C standard requires).
#[unsafe(no_mangle)]
#[unsafe(naked)]
pub unsafe extern "C" fn memcpy(_dest: *mut u8, _src: *const u8, _n: usize) -> *mut u8 {
    naked_asm!("mov rax, rdi", "mov rcx, rdx", "rep movsb", "ret")
}

/// `memmove(3)`: copies `n` bytes from `src` to `dest`, ranges may overlap; returns `dest`.
///
/// # Safety
/// `dest` must be valid for writes and `src` for reads of `n` bytes.
#[unsafe(no_mangle)]
#[unsafe(naked)]
pub unsafe extern "C" fn memmove(_dest: *mut u8, _src: *const u8, _n: usize) -> *mut u8 {
    naked_asm!(
        "mov rax, rdi",
        "mov rcx, rdx",
        // Copy backwards only when dest lies inside (src, src + n).
        "cmp rdi, rsi",
        "jbe 2f",
        "lea r8, [rsi + rdx]",
        "cmp rdi, r8",
        "jae 2f",
        "lea rsi, [rsi + rdx - 1]",
        "lea rdi, [rdi + rdx - 1]",
        "std",
        "rep movsb",
        "cld",
        "ret",
        "2:",
        "rep movsb",
        "ret",
    )
}

/// `memset(3)`: fills `n` bytes at `dest` with the low byte of `c`, returns `dest`.
///
/// # Safety
/// `dest` must be valid for writes of `n` bytes.
#[unsafe(no_mangle)]
#[unsafe(naked)]
pub unsafe extern "C" fn memset(_dest: *mut u8, _c: i32, _n: usize) -> *mut u8 {
    naked_asm!(
        "mov r8, rdi",
        "mov eax, esi",
        "mov rcx, rdx",
        "rep stosb",
        "mov rax, r8",
        "ret"
    )
}

/// `memcmp(3)`: compares `n` bytes, returns <0, 0 or >0.
///
/// # Safety
/// `a` and `b` must both be valid for reads of `n` bytes.
#[unsafe(no_mangle)]
#[unsafe(naked)]
pub unsafe extern "C" fn memcmp(_a: *const u8, _b: *const u8, _n: usize) -> i32 {
    naked_asm!(
        "xor eax, eax",
        "test rdx, rdx",
        "jz 3f",
        "2:",
        "movzx eax, byte ptr [rdi]",
        "movzx ecx, byte ptr [rsi]",
        "sub eax, ecx",
        "jnz 3f",
        "inc rdi",
        "inc rsi",
        "dec rdx",
        "jnz 2b",
        "3:",
        "ret",
    )
}

/// `bcmp(3)`: 0 iff the `n` bytes are equal (here simply `memcmp`).
///
/// # Safety
/// As for [`memcmp`].
#[unsafe(no_mangle)]
#[unsafe(naked)]
pub unsafe extern "C" fn bcmp(_a: *const u8, _b: *const u8, _n: usize) -> i32 {
    naked_asm!("jmp {memcmp}", memcmp = sym memcmp)
}

/// Never called: nothing unwinds (panic = "abort", and the panic handler never returns).
#[unsafe(no_mangle)]
pub extern "C" fn rust_eh_personality() {}

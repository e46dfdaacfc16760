//! Vector registers (xmm/ymm, and zmm + opmask where the CPU has AVX-512),
//! some general-purpose registers, MXCSR and x87 held by one asm block across
//! checkpoint -> kill -> restore (testdata/regs.c).
mod common;

use common::*;

fn cpu_flags() -> Vec<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").expect("/proc/cpuinfo");
    let line = info
        .lines()
        .find(|l| l.starts_with("flags"))
        .expect("no flags line in /proc/cpuinfo");
    line.split(':')
        .nth(1)
        .unwrap_or("")
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

fn has_flag(flag: &str) -> bool {
    cpu_flags().iter().any(|f| f == flag)
}

/// Runs regs at `level`, checkpoints it while it holds its registers,
/// restores it, and returns its verdict line.
fn hold_registers_across_restore(level: &str) -> String {
    let d = tempdir();
    let (stop, ck) = (d.join("stop"), d.join("ckpt"));
    let mut t = Target::start("regs", &[stop.as_os_str(), os(level)]);
    let lvl = t.stdout.expect_prefix("level ");
    // "ready" is written by the asm block itself, after every register is loaded
    t.stdout.expect_line("ready");
    t.dump_kill(&ck);

    let mut r = Restored::of(&ck, &t);
    r.assert_same_pid();
    touch(&stop);
    r.wait_success();
    let verdict = r
        .stdout
        .seen()
        .iter()
        .find(|l| l.starts_with("regs ok "))
        .unwrap_or_else(|| {
            panic!(
                "no verdict from the restored program: {:?}",
                r.stdout.seen()
            )
        })
        .clone();
    assert!(
        !r.stdout.seen().iter().any(|l| l == "ready"),
        "the restored program started over (printed ready again)"
    );
    eprintln!("{lvl}: {verdict}");
    verdict
}

/// The best level the CPU has: zmm0-31 + k1-7 with AVX-512F, else ymm0-15.
#[test]
fn vector_registers_at_best_level() {
    let verdict = hold_registers_across_restore("auto");
    if has_flag("avx512f") {
        assert!(
            verdict.contains("level=avx512 zmm0-31 k1-7"),
            "AVX-512 CPU, but: {verdict}"
        );
    } else if has_flag("avx") {
        eprintln!("note: this CPU has no AVX-512F: zmm/opmask not checked, ymm0-15 are");
        assert!(
            verdict.contains("level=avx ymm0-15"),
            "AVX CPU, but: {verdict}"
        );
    } else {
        eprintln!("note: this CPU has no AVX: only xmm0-15 are checked");
        assert!(verdict.contains("level=sse xmm0-15"), "{verdict}");
    }
}

/// ymm0-15 (all 256 bits) on their own, also on AVX-512 CPUs where the
/// upper zmm halves are then in their initial state.
#[test]
fn ymm_registers() {
    if !has_flag("avx") {
        eprintln!("note: this CPU has no AVX: checking xmm0-15 instead of ymm0-15");
        hold_registers_across_restore("sse");
        return;
    }
    let verdict = hold_registers_across_restore("avx");
    assert!(verdict.contains("level=avx ymm0-15"), "{verdict}");
}

/// xmm0-15 with legacy SSE instructions.
#[test]
fn xmm_registers() {
    let verdict = hold_registers_across_restore("sse");
    assert!(
        verdict.contains("level=sse xmm0-15 gpr mxcsr x87"),
        "{verdict}"
    );
}

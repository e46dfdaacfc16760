//! Link the loader as a static, non-PIE executable placed inside the loader zone.
//!
//! The link address comes from the `ckpt-plan` crate (the contract shared with the front
//! end), so the zone is defined in exactly one place. Everything here is passed as link arguments
//! of the binary, which apply whatever the working directory of the cargo invocation is.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");

    let args = [
        // No C runtime, no libc: `_start` is ours (src/main.rs).
        "-nostartfiles".to_string(),
        "-nostdlib".to_string(),
        // Static and position-dependent (ET_EXEC). The code itself stays PIC (rustc's
        // default relocation model): RIP-relative addressing is what works at an address
        // above 4 GiB, while `-C relocation-model=static` would emit 32-bit absolute
        // relocations that cannot reach the loader zone. rustc asks for `-pie` for PIC
        // code; the later `-no-pie` wins.
        "-static".to_string(),
        "-no-pie".to_string(),
        // Put the first PT_LOAD at the start of the loader zone; the rest follows it.
        base_address_arg(ckpt_plan::LOADER_ZONE_START),
        "-Wl,--build-id=none".to_string(),
        "-Wl,-z,noexecstack".to_string(),
        // No PT_INTERP, no dynamic section.
        "-Wl,--no-dynamic-linker".to_string(),
    ];
    println!("cargo:rerun-if-env-changed=CARGO_ENCODED_RUSTFLAGS");
    for a in args {
        println!("cargo:rustc-link-arg-bins={a}");
    }
}

/// The option that sets the link address. rustc links x86_64-unknown-linux-gnu with its
/// bundled rust-lld by default (`--image-base`); GNU ld only knows `-Ttext-segment` for
/// ELF. GNU ld is used only when the rustflags turn lld off.
fn base_address_arg(addr: u64) -> String {
    let flags = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    let gnu_ld = flags.split('\x1f').any(|f| {
        (f.contains("linker-features") && f.contains("-lld"))
            || (f.contains("link-self-contained") && (f.contains("-linker") || f.ends_with("=no")))
    });
    if gnu_ld {
        format!("-Wl,-Ttext-segment={addr:#x}")
    } else {
        format!("-Wl,--image-base={addr:#x}")
    }
}

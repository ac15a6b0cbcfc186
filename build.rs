//! Three link settings for Linux, for start-up time and memory:
//!
//! - The unwinder (`_Unwind_*`, which panics use) is linked in from GCC's static `libgcc_eh`
//!   instead of loaded from `libgcc_s.so.1`. The shared library's constructor asks the CPU
//!   for its features with `cpuid`, an instruction a virtual machine traps: 7 µs each on the
//!   machine of the benchmarks, about 0.3 ms of a 2.5 ms start-up with the loading of one more
//!   library. Rust's own static builds (`crt-static`) link the same archive. Unwinding works
//!   as before (a panic in a tool's work is still caught). Where the C compiler does not know
//!   the archive, the default stays.
//! - The binary's relative relocations are packed (`-z pack-relative-relocs`, DT_RELR)
//!   where the C library that will load it understands them: glibc 2.36 or later, on the
//!   machine that builds it (`cargo install` builds where it runs). A position-independent
//!   binary of this size carries about 25,000 relative relocations. As plain RELA entries
//!   they are 580 KiB of the file, which the loader reads page by page at every start;
//!   packed, they take a few KiB. An older glibc ignores the packed form and would start a
//!   binary whose pointers were never relocated, so the flag is added only when the build
//!   machine's glibc is known to be new enough, and only for a native build.
//! - The functions a server runs at start-up, idling and in a session's usual calls, listed in
//!   `link/order.txt` (written by `scripts/link-order.py`), are laid out together
//!   (`--symbol-ordering-file`). Spread over the binary, they touched almost every 64 KiB
//!   block of its 5.4 MB of code, and the kernel maps code in such blocks: an idle server held
//!   4.6 MiB of code; laid out together, about 1 MiB. The file names functions; a name the
//!   build no longer has is skipped. Only a linker that takes the option gets it (Rust's own
//!   `rust-lld`, the default for this target since Rust 1.90, does; GNU `ld` does not): a
//!   trial link with the same compiler, flags and linker decides.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CC");
    println!("cargo:rerun-if-changed=link/order.txt");
    println!("cargo:rerun-if-env-changed=T9_IPC_LINK_MAP");
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    let native = var("HOST") == var("TARGET");
    let linux_gnu = var("CARGO_CFG_TARGET_OS") == "linux" && var("CARGO_CFG_TARGET_ENV") == "gnu";
    if native && linux_gnu && glibc_at_least(2, 36) {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    if native && linux_gnu && has_gcc_eh() {
        // Named by this crate, it comes before std's `-lgcc_s` on the link line: the
        // unwinder's symbols are taken from it, and `--as-needed` drops `libgcc_s`.
        println!("cargo:rustc-link-lib=static:-bundle=gcc_eh");
    }
    let order = format!("{}/link/order.txt", var("CARGO_MANIFEST_DIR"));
    let args = [
        format!("-Wl,--symbol-ordering-file={order}"),
        "-Wl,--no-warn-symbol-ordering".to_owned(),
    ];
    // The list names the release build's functions; other builds' names differ.
    let release = var("PROFILE") == "release";
    if release && std::path::Path::new(&order).is_file() && links_with(&args) {
        for arg in args {
            println!("cargo:rustc-link-arg-bins={arg}");
        }
    }
    // For scripts/link-order.py: where the linker writes where it placed each function.
    if let Ok(map) = std::env::var("T9_IPC_LINK_MAP") {
        println!("cargo:rustc-link-arg-bins=-Wl,-Map={map}");
    }
}

/// True when a small program links with these linker arguments added, built by the same
/// compiler for the same target with the same flags and linker as this crate.
fn links_with(args: &[String]) -> bool {
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    let out = std::path::PathBuf::from(var("OUT_DIR"));
    let source = out.join("probe.rs");
    if std::fs::write(&source, "fn main() {}\n").is_err() {
        return false;
    }
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let mut probe = Command::new(rustc);
    probe
        .arg("--target")
        .arg(var("TARGET"))
        .arg("-o")
        .arg(out.join("probe"))
        .arg(&source);
    let flags = var("CARGO_ENCODED_RUSTFLAGS");
    probe.args(flags.split('\x1f').filter(|f| !f.is_empty()));
    // A linker set in Cargo's configuration (`target.<triple>.linker`) is not among the flags.
    if let Ok(linker) = std::env::var("RUSTC_LINKER") {
        probe.arg("-C").arg(format!("linker={linker}"));
    }
    for arg in args {
        probe.arg("-C").arg(format!("link-arg={arg}"));
    }
    probe.output().is_ok_and(|o| o.status.success())
}

/// True when the C compiler that links (`CC`, else `cc`) knows where `libgcc_eh.a` is (GCC
/// ships it; a toolchain without it keeps `libgcc_s.so.1`, as Rust's default).
fn has_gcc_eh() -> bool {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    let Ok(out) = Command::new(cc)
        .arg("-print-file-name=libgcc_eh.a")
        .output()
    else {
        return false;
    };
    // An unknown file is printed back as it was asked, without a folder.
    let path = String::from_utf8_lossy(&out.stdout);
    let path = std::path::Path::new(path.trim());
    out.status.success() && path.is_absolute() && path.is_file()
}

/// True when `getconf GNU_LIBC_VERSION` names glibc `major.minor` or later.
fn glibc_at_least(major: u32, minor: u32) -> bool {
    let Ok(out) = Command::new("getconf").arg("GNU_LIBC_VERSION").output() else {
        return false;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    // "glibc 2.36"
    let Some(version) = text.split_whitespace().nth(1) else {
        return false;
    };
    let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(a), Some(b)) => (a, b) >= (major, minor),
        _ => false,
    }
}

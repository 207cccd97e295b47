//! The BPF object is linked by `bpf-linker`, which cargo does not know about;
//! rebuild when that binary changes so a linker upgrade is never ignored.
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}

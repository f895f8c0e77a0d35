//! Links libseccomp statically (the agent must be a static binary in the initramfs).
//! The directory holding `libseccomp.a` can be overridden with `HUSK_LIBSECCOMP_DIR`.

fn main() {
    println!("cargo:rerun-if-env-changed=HUSK_LIBSECCOMP_DIR");
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".into());
    let dir = std::env::var("HUSK_LIBSECCOMP_DIR")
        .unwrap_or_else(|_| format!("/usr/lib/{arch}-linux-gnu"));
    println!("cargo:rustc-link-search=native={dir}");
    println!("cargo:rustc-link-lib=static=seccomp");
}

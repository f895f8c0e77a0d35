//! Making sure the Debian packages and tools husk needs are there before
//! `demo` and `test` build, so that on a fresh Debian 12 machine with Rust
//! the README's two commands are the whole set-up.

use anyhow::{bail, Context, Result};

use crate::artifacts;

/// Set to skip the check (a host that is not Debian but has the parts).
const SKIP_ENV: &str = "HUSK_SKIP_INSTALL_DEPS";

/// Runs `scripts/install-deps.sh`: it only checks (in well under a second)
/// when everything is installed, and installs what is missing, which needs
/// root; it says so when it is not.
pub fn ensure() -> Result<()> {
    if std::env::var_os(SKIP_ENV).is_some() {
        return Ok(());
    }
    let script = artifacts::workspace_root().join("scripts/install-deps.sh");
    let status = std::process::Command::new("bash")
        .arg(&script)
        .status()
        .with_context(|| format!("run {}", script.display()))?;
    if !status.success() {
        bail!(
            "{} failed ({status}): the dependencies it lists are missing (as root it installs \
             them; {SKIP_ENV}=1 skips this check)",
            script.display()
        );
    }
    Ok(())
}

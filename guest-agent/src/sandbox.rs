//! Sandbox-wide settings of the guest: the virtio-fs share, hostname, DNS, sysctls.

use std::fmt::Write as _;
use std::path::Path;

use husk_protocol::agent::CreateSandboxRequest;
use nix::mount::{mount, MsFlags};

use crate::error::{Error, Result};

/// Where the guest keeps resolv.conf (containers get it through their spec's mounts).
pub const RESOLV_CONF: &str = "/etc/resolv.conf";

/// The resolv.conf text for the request's DNS settings (`None` when it has none).
pub fn resolv_conf(req: &CreateSandboxRequest) -> Option<String> {
    if req.dns_servers.is_empty() && req.dns_searches.is_empty() && req.dns_options.is_empty() {
        return None;
    }
    let mut text = String::new();
    for s in &req.dns_servers {
        let _ = writeln!(text, "nameserver {s}");
    }
    if !req.dns_searches.is_empty() {
        let _ = writeln!(text, "search {}", req.dns_searches.join(" "));
    }
    if !req.dns_options.is_empty() {
        let _ = writeln!(text, "options {}", req.dns_options.join(" "));
    }
    Some(text)
}

/// Applies the sandbox settings to the guest. Only called when the agent is the guest's
/// init; on a host these would change the host.
pub fn apply(req: &CreateSandboxRequest, share: &Path) -> Result<()> {
    if !req.share_tag.is_empty() {
        std::fs::create_dir_all(share).map_err(|e| Error::io(format!("mkdir {share:?}"), e))?;
        mount(
            Some(req.share_tag.as_str()),
            share,
            Some("virtiofs"),
            MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|e| {
            Error::errno(
                format!("mount virtiofs {:?} on {share:?}", req.share_tag),
                e,
            )
        })?;
    }
    if !req.hostname.is_empty() {
        nix::unistd::sethostname(&req.hostname).map_err(|e| Error::errno("sethostname", e))?;
    }
    if let Some(text) = resolv_conf(req) {
        let _ = std::fs::create_dir_all("/etc");
        std::fs::write(RESOLV_CONF, text).map_err(|e| Error::io("write resolv.conf", e))?;
    }
    for (key, value) in &req.sysctls {
        if key.contains("..") || key.contains('/') {
            return Err(Error::InvalidArgument(format!("sysctl {key:?}")));
        }
        let path = Path::new("/proc/sys").join(key.replace('.', "/"));
        std::fs::write(&path, value).map_err(|e| Error::io(format!("sysctl {key}"), e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_lists_servers_search_options() {
        let req = CreateSandboxRequest {
            dns_servers: vec!["10.0.0.2".into(), "1.1.1.1".into()],
            dns_searches: vec!["svc.local".into()],
            dns_options: vec!["ndots:5".into()],
            ..Default::default()
        };
        assert_eq!(
            resolv_conf(&req).expect("text"),
            "nameserver 10.0.0.2\nnameserver 1.1.1.1\nsearch svc.local\noptions ndots:5\n"
        );
        assert!(resolv_conf(&CreateSandboxRequest::default()).is_none());
    }
}

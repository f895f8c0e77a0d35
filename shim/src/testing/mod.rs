//! Fakes for the shim's unit tests, plugged into the seams: the agent ([`FakeAgent`], an
//! `AgentApi`), the pod VM ([`FakePodLauncher`], a `PodLauncher`) and the event sink
//! ([`CollectingEvents`]). They run nothing and mount nothing; the only files they write
//! are below the directories the tests hand them (tempdirs).

mod agent;
mod events;
mod pod;

pub use agent::{Failure, FakeAgent, Rpc};
pub use events::CollectingEvents;
pub use pod::{FakePodLauncher, FAKE_VMM_LOG};

use std::time::{Duration, Instant};

/// Fails the test unless it runs as root: tests that mount, make cgroups or namespaces
/// must not pass by doing nothing. `what` says what needs root.
pub fn need_root(what: &str) {
    let euid = nix::unistd::geteuid();
    assert!(
        euid.is_root(),
        "this test {what}: needs root, euid is {euid}"
    );
}

/// How long a test waits for something another thread does before it fails.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// Waits until `cond` holds, failing the test after [`DEADLINE`].
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

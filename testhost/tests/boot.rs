//! Boots the real test host (QEMU TCG, Debian's cloud kernel, kvm-amd).

use husk_lock::MutexExt;
use std::time::{Duration, Instant};

use husk_testhost::{qemu::Error, HostFile, TestHost, TestHostConfig, TestHostImage, Watch};

/// One test host at a time: they share two cores, and the leftover check of
/// `a_timeout_kills_qemu` must not see the QEMU of another test.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.locked()
}

/// A small test host that gives up after `timeout`.
fn host(timeout: Duration) -> TestHost {
    host_with(TestHostConfig {
        timeout,
        ..Default::default()
    })
}

/// A small test host that gives up after `silence_limit` without output.
fn host_with_silence_limit(silence_limit: Duration) -> TestHost {
    host_with(TestHostConfig {
        timeout: Duration::from_secs(300),
        silence_limit,
        ..Default::default()
    })
}

fn host_with(config: TestHostConfig) -> TestHost {
    TestHost::new(TestHostConfig {
        memory_mib: 1024,
        ..config
    })
    .expect("prepare the test host")
}

/// An image that runs `command` and holds nothing else.
fn running(command: &str) -> TestHostImage {
    TestHostImage {
        command: command.into(),
        ..Default::default()
    }
}

/// Asserts that a run cut short ended well before its 300 s limit: within
/// the boot plus the few seconds of grace or silence it was given.
fn assert_cut_short(started: Instant) {
    let took = started.elapsed();
    assert!(took < Duration::from_secs(120), "{took:?}");
}

#[test]
fn runs_a_command_with_files_and_reports_its_status() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data.txt");
    std::fs::write(&data, "payload from the outer host\n").unwrap();
    let image = TestHostImage {
        files: vec![
            HostFile::new(&data, "/srv/data.txt"),
            HostFile::executable("/usr/bin/env", "/opt/env"),
        ],
        env: vec![("HUSK_GREETING".into(), "hello 'quoted' world".into())],
        command: "cat /srv/data.txt; /opt/env | grep HUSK_GREETING; \
                  test -c /dev/kvm && grep -qw svm /proc/cpuinfo && echo kvm-ready; \
                  echo vgif=$(cat /sys/module/kvm_amd/parameters/vgif); exit 7"
            .into(),
        kvm_amd_params: "vgif=0".into(),
    };
    let mut lines = Vec::new();
    let outcome = host(Duration::from_secs(300))
        .run(&image, |l| lines.push(l.to_string()))
        .expect("run");
    assert_eq!(outcome.exit_code, 7, "{lines:#?}");
    assert!(
        lines.iter().any(|l| l == "payload from the outer host"),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l == "HUSK_GREETING=hello 'quoted' world"),
        "{lines:#?}"
    );
    assert!(lines.iter().any(|l| l == "kvm-ready"), "{lines:#?}");
    assert!(
        lines.iter().any(|l| l == "vgif=0"),
        "module parameters reach kvm-amd: {lines:#?}"
    );
}

#[test]
fn a_timeout_kills_qemu() {
    let _serial = one_at_a_time();
    let image = running("echo started; sleep 600");
    let mut lines = Vec::new();
    let err = host(Duration::from_secs(30))
        .run(&image, |l| lines.push(l.to_string()))
        .err();
    // The command prints, then sleeps past the limit.
    assert!(matches!(err, Some(Error::Timeout(_))), "{err:?} {lines:#?}");
    assert!(lines.iter().any(|l| l == "started"), "{lines:#?}");
    let me = std::process::id().to_string();
    let leftovers: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains("qemu-system") && c.contains(&format!("husk-testhost-{me}-")))
        .collect();
    assert!(leftovers.is_empty(), "QEMU left running: {leftovers:?}");
}

#[test]
fn a_watcher_ends_the_run_early() {
    let _serial = one_at_a_time();
    let image = running("echo fault; sleep 600");
    let started = Instant::now();
    let err = host(Duration::from_secs(300))
        .run_watched(&image, |l| match l {
            "fault" => Watch::EndWithin(Duration::from_secs(2)),
            _ => Watch::Continue,
        })
        .err();
    assert!(matches!(err, Some(Error::Stopped(_))), "{err:?}");
    assert_cut_short(started);
}

#[test]
fn a_silent_host_is_given_up_as_wedged() {
    let _serial = one_at_a_time();
    // Stopping the heartbeat makes the host look wedged: no output at all.
    let image = running(&format!(
        "echo quiet from now on; kill -STOP $(cat {}); sleep 600",
        husk_testhost::image::HEARTBEAT_PID_FILE
    ));
    let mut lines = Vec::new();
    let started = Instant::now();
    let err = host_with_silence_limit(Duration::from_secs(15))
        .run(&image, |l| lines.push(l.to_string()))
        .err();
    assert!(matches!(err, Some(Error::Wedged(_))), "{err:?} {lines:#?}");
    assert!(lines.iter().any(|l| l == "quiet from now on"), "{lines:#?}");
    assert_cut_short(started);
}

#[test]
fn heartbeats_keep_a_quiet_command_alive_and_stay_off_the_console() {
    let _serial = one_at_a_time();
    let image = running("sleep 25; echo done");
    let mut lines = Vec::new();
    let outcome = host_with_silence_limit(Duration::from_secs(15))
        .run(&image, |l| lines.push(l.to_string()))
        .expect("a quiet command outlives the silence limit");
    assert_eq!(outcome.exit_code, 0);
    assert!(lines.iter().any(|l| l == "done"), "{lines:#?}");
    assert!(
        !lines.iter().any(|l| l.contains("ALIVE")),
        "heartbeats are not passed on: {lines:#?}"
    );
}

//! The shell scripts the test host runs: each test (or the one command of
//! the demo and the benchmarks) between its start marker and its verdict
//! marker, so that xtask can tell in whose output a console line appeared.

use std::collections::BTreeSet;

use super::{FAILED_MARKER, KERNEL_LOG_MARKER, PASSED_MARKER, START_MARKER};

/// libtest flags that take no value and apply to running a test, not only to
/// listing it.
const RUN_FLAGS: &[&str] = &[
    "--nocapture",
    "--show-output",
    "--ignored",
    "--include-ignored",
];

/// Every test of every binary under `tests_dir` as its own process, except
/// those in `skip`, each between its markers. `test_args` filter the listed
/// tests; the run flags among them also go to each test run.
pub fn tests(
    bin_dir: &str,
    work_dir: &str,
    tests_dir: &str,
    test_args: &[String],
    skip: &BTreeSet<String>,
) -> String {
    let list_args = shell_words(test_args.iter().map(String::as_str));
    let run_flags = shell_words(
        test_args
            .iter()
            .map(String::as_str)
            .filter(|a| RUN_FLAGS.contains(a)),
    );
    // `''` never matches a `binary::test` name, so an empty skip list skips nothing.
    let skip_pattern = if skip.is_empty() {
        "''".to_string()
    } else {
        skip.iter().map(|s| quote(s)).collect::<Vec<_>>().join("|")
    };
    // `--list` names ignored tests too, and running one alone "passes" with nothing run:
    // they are left out unless the caller asked for them.
    let ignored = match test_args
        .iter()
        .any(|a| a == "--ignored" || a == "--include-ignored")
    {
        true => "ign=' '".to_string(),
        false => format!(
            "ign=\" $(\"$t\" --list --format terse --ignored {list_args} \
             | sed -n 's/: test$//p' | tr '\\n' ' ')\""
        ),
    };
    format!(
        "export PATH={bin_dir}:$PATH; mkdir -p {work_dir}; rc=0; \
         for t in {tests_dir}/*; do b=$(basename \"$t\"); \
           if ! list=$(\"$t\" --list --format terse {list_args}); then \
             printf '\\n{FAILED_MARKER}%s\\n' \"$b::--list\"; rc=1; continue; fi; \
           {ignored}; \
           for name in $(echo \"$list\" | sed -n 's/: test$//p'); do \
             case \"$b::$name\" in {skip_pattern}) continue;; esac; \
             case \"$ign\" in *\" $name \"*) echo \"ignored: $b::$name\"; continue;; esac; \
             echo \"{START_MARKER}$b::$name\"; \
             if \"$t\" --exact \"$name\" --test-threads=1 {run_flags}; \
             then printf '\\n{PASSED_MARKER}%s\\n' \"$b::$name\"; \
             else printf '\\n{FAILED_MARKER}%s\\n' \"$b::$name\"; rc=1; fi; \
           done; \
         done; \
         if [ $rc -ne 0 ]; then echo '{KERNEL_LOG_MARKER}'; dmesg 2>/dev/null | tail -n 40; fi; \
         exit $rc"
    )
}

/// `command` as the one unit `name` (no white space in it) between markers,
/// exiting with the command's status.
pub fn single(name: &str, command: &str) -> String {
    let name = quote(name);
    format!(
        "echo {START_MARKER}{name}; \
         if ( {command} ); then printf '\\n{PASSED_MARKER}%s\\n' {name}; \
         else rc=$?; printf '\\n{FAILED_MARKER}%s\\n' {name}; exit $rc; fi"
    )
}

fn quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

fn shell_words<'a>(words: impl Iterator<Item = &'a str>) -> String {
    words.map(quote).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tests_script_skips_passed_tests_and_passes_run_flags() {
        let skip: BTreeSet<String> = ["shim_e2e::a'b".to_string()].into();
        let s = tests(
            "/husk/bin",
            "/tmp/w",
            "/husk/tests",
            &["cri".into(), "--nocapture".into()],
            &skip,
        );
        assert!(s.contains(r"in 'shim_e2e::a'\''b') continue;; esac"), "{s}");
        assert!(
            s.contains("--list --format terse 'cri' '--nocapture'"),
            "{s}"
        );
        assert!(s.contains("--test-threads=1 '--nocapture';"), "{s}");
        assert!(s.contains("echo \"== $b::$name\""), "{s}");
        let none = tests("/b", "/w", "/t", &[], &BTreeSet::new());
        assert!(none.contains("in '') continue;; esac"), "{none}");
        assert!(none.contains("--list --format terse --ignored"), "{none}");
        let with = tests(
            "/b",
            "/w",
            "/t",
            &["--include-ignored".into()],
            &BTreeSet::new(),
        );
        assert!(with.contains("ign=' ';"), "{with}");
        assert!(!with.contains("terse --ignored"), "{with}");
    }

    #[test]
    fn single_command_reports_itself_and_keeps_its_status() {
        let s = single("xtask::demo", "/husk/bin/husk-demo");
        assert!(s.starts_with("echo == 'xtask::demo'; "), "{s}");
        assert!(s.contains("if ( /husk/bin/husk-demo ); then"), "{s}");
        assert!(s.contains("exit $rc"), "{s}");
    }
}

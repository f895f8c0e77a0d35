#!/usr/bin/env python3
"""Measures how often the nested test host faults, per test-host configuration.

Runs `cargo xtask e2e FILTER` RUNS times for each configuration, interleaved
(run 1 of every configuration, then run 2, ...) so that whatever else loads
the machine falls on each configuration alike, and counts the emulation faults that
xtask recorded (target/husk/e2e-summary.json), by kind: kernel-oops
(BUG/Oops/GP fault/panic of the test host's kernel), soft-lockup, wedge (the
test host went silent, also during its boot), triple-fault (a guest's vCPU
shut down), host-died (QEMU ended with no exit status and no fault line).

    python3 scripts/fault-rate.py --runs 10 vmm shim

Logs go to target/husk/fault-rate/, the table to stdout and
target/husk/fault-rate/table.json. A dev tool for choosing the test host
(QEMU and cloud-kernel versions); CI does not run it. The QEMU 10.0
configurations expect bookworm-backports' qemu-system-x86 and qemu-system-data
unpacked under /opt/qemu10/root (`apt-get download` both with the backports
source added, then `dpkg-deb -x` each into that folder); the 6.12 kernel
needs only the backports source (testhost downloads it).
"""
import argparse
import json
import os
import re
import subprocess
import time

QEMU10 = "/opt/qemu10/root/usr"
CONFIGS = {
    "qemu-7.2 + 6.1": {},
    "qemu-10.0 + 6.1": {
        "HUSK_TESTHOST_QEMU": f"{QEMU10}/bin/qemu-system-x86_64",
        "HUSK_TESTHOST_QEMU_DATA": f"{QEMU10}/share/qemu",
    },
    "qemu-7.2 + 6.12": {"HUSK_TESTHOST_KERNEL_SUITE": "bookworm-backports"},
    "qemu-10.0 + 6.12": {
        "HUSK_TESTHOST_QEMU": f"{QEMU10}/bin/qemu-system-x86_64",
        "HUSK_TESTHOST_QEMU_DATA": f"{QEMU10}/share/qemu",
        "HUSK_TESTHOST_KERNEL_SUITE": "bookworm-backports",
    },
}
KINDS = ["kernel-oops", "soft-lockup", "wedge", "triple-fault", "host-died"]
SUMMARY = "target/husk/e2e-summary.json"


def read_summary():
    """Test hosts booted and faults by kind, from xtask's e2e-summary.json."""
    try:
        with open(SUMMARY) as fh:
            summary = json.load(fh)
    except (OSError, ValueError):
        return 0, {}
    return len(summary.get("attempts", [])), summary.get("faults", {})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("filters", nargs="+")
    args = ap.parse_args()
    out = "target/husk/fault-rate"
    os.makedirs(out, exist_ok=True)
    configs = [c.strip() for c in args.configs.split(",")]
    table = {c: {"runs": 0, "hosts": 0, "failed_runs": 0, "wall_s": 0.0,
                 **{k: 0 for k in KINDS}} for c in configs}
    for run in range(1, args.runs + 1):
        for c in configs:
            for f in args.filters:
                env = dict(os.environ, **CONFIGS[c])
                if os.path.exists(SUMMARY):
                    os.remove(SUMMARY)
                started = time.time()
                p = subprocess.run(["cargo", "xtask", "e2e", f], env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, errors="replace")
                wall = time.time() - started
                slug = re.sub(r"[^a-z0-9.]+", "-", c.lower())
                with open(f"{out}/{slug}-{f}-{run}.log", "w") as fh:
                    fh.write(p.stdout)
                hosts, faults = read_summary()
                row = table[c]
                row["runs"] += 1
                row["hosts"] += hosts
                row["failed_runs"] += p.returncode != 0
                row["wall_s"] += wall
                for k, n in faults.items():
                    row[k] = row.get(k, 0) + n
                print(f"run {run} {c} {f}: exit {p.returncode}, {wall:.0f} s, "
                      f"hosts {hosts}, faults {faults}", flush=True)
        with open(f"{out}/table.json", "w") as fh:
            json.dump(table, fh, indent=1)
    print(f"\n| configuration | runs | test hosts | {' | '.join(KINDS)} | faults/run | failed runs | mean wall s |")
    print("|---|---|---|" + "---|" * len(KINDS) + "---|---|---|")
    for c, r in table.items():
        faults = sum(r[k] for k in KINDS)
        print(f"| {c} | {r['runs']} | {r['hosts']} | " + " | ".join(str(r[k]) for k in KINDS)
              + f" | {faults / max(r['runs'], 1):.2f} | {r['failed_runs']} | {r['wall_s'] / max(r['runs'], 1):.0f} |")


if __name__ == "__main__":
    main()

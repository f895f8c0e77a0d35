//! The first proof that this host (or the test host) has working KVM: open
//! `/dev/kvm` with kvm-ioctls, check the API and the in-kernel irqchip, and
//! run a few real-mode instructions that write a byte to an I/O port.

use kvm_ioctls::{Cap, Kvm, VcpuExit};

const GUEST_ADDR: u64 = 0x1000;
const PORT: u16 = 0x3f0;
const MARKER: u8 = 0x5a;

/// `mov dx, PORT; mov al, MARKER; out dx, al; hlt`
const CODE: [u8; 8] = [0xba, 0xf0, 0x03, 0xb0, MARKER, 0xee, 0xf4, 0x00];

fn kvm_vendor_module() -> Option<String> {
    let modules = std::fs::read_to_string("/proc/modules").unwrap_or_default();
    modules
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .find(|m| *m == "kvm_amd" || *m == "kvm_intel")
        .map(str::to_string)
}

#[test]
fn kvm_vendor_module_is_loaded() {
    let module = kvm_vendor_module();
    assert!(
        module.is_some(),
        "neither kvm_amd nor kvm_intel is loaded: /dev/kvm is not hardware KVM here \
         (run the end-to-end tests with `cargo xtask e2e`, which uses the test host)"
    );
}

#[test]
fn real_mode_guest_writes_to_an_io_port() {
    let kvm = Kvm::new().expect("open /dev/kvm");
    assert_eq!(kvm.get_api_version(), 12, "KVM API version");
    assert!(
        kvm.check_extension(Cap::Irqchip),
        "in-kernel irqchip capability"
    );
    assert!(
        kvm.check_extension(Cap::UserMemory),
        "user memory capability"
    );

    let vm = kvm.create_vm().expect("create VM");
    let size = 0x4000usize;
    // SAFETY: an anonymous private mapping with no address hint; the result is
    // checked against MAP_FAILED before use.
    let memory = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    assert_ne!(memory, libc::MAP_FAILED, "mmap guest memory");
    // SAFETY: `memory` is a fresh writable mapping of `size` bytes and the
    // code is far smaller than it.
    unsafe {
        std::ptr::copy_nonoverlapping(
            CODE.as_ptr(),
            (memory as *mut u8).add(GUEST_ADDR as usize),
            CODE.len(),
        );
    }
    let region = kvm_bindings::kvm_userspace_memory_region {
        slot: 0,
        guest_phys_addr: 0,
        memory_size: size as u64,
        userspace_addr: memory as u64,
        flags: 0,
    };
    // SAFETY: the region maps memory this test owns for the whole lifetime of
    // the VM (it is never unmapped before the VM is dropped).
    unsafe { vm.set_user_memory_region(region) }.expect("set memory region");

    let mut vcpu = vm.create_vcpu(0).expect("create vCPU");
    let mut sregs = vcpu.get_sregs().expect("get sregs");
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs).expect("set sregs");
    let regs = kvm_bindings::kvm_regs {
        rip: GUEST_ADDR,
        rflags: 2,
        ..Default::default()
    };
    vcpu.set_regs(&regs).expect("set regs");

    let mut seen = None;
    for _ in 0..16 {
        match vcpu.run().expect("KVM_RUN") {
            VcpuExit::IoOut(port, data) => seen = Some((port, data.to_vec())),
            VcpuExit::Hlt => break,
            other => panic!("unexpected exit {other:?}"),
        }
    }
    assert_eq!(
        seen,
        Some((PORT, vec![MARKER])),
        "the guest's OUT reached us"
    );
}

//! Turns a validated [`VmConfig`] into a running VM and waits for its end.

use husk_lock::MutexExt;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kvm_ioctls::IoEventAddress;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use crate::api::{ApiHandler, ApiServer};
use crate::arch::{boot, layout, mptable, regs};
use crate::confine::{confine_process, ConfineError};
use crate::console_file::CappedFile;
use crate::devices::bus::Bus;
use crate::devices::legacy::{SerialDevice, I8042};
use crate::devices::virtio::fs::FsDevice;
use crate::devices::virtio::mmio::{MmioTransport, NOTIFY_REG_OFFSET};
use crate::devices::virtio::vsock::event_handler::VsockEventHandler;
use crate::devices::virtio::vsock::unix::VsockMuxer;
use crate::devices::virtio::vsock::VsockDevice;
use crate::devices::virtio::VirtioDevice;
use crate::event_loop::{EventLoop, Subscriber};
use crate::exit::{ExitReason, ExitSignal};
use crate::memory::{create_guest_memory, GuestMemoryMmap};
use crate::metrics::Metrics;
use crate::seccomp::{self, SeccompError, ThreadFilters, ThreadKind};
use crate::vstate::control::{install_kick_handler, VcpuControl};
use crate::vstate::vcpu::Vcpu;
use crate::vstate::vm::Vm;
use husk_vmm_api::{SerialOutput, VmConfig};

/// Errors while building or running the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// Guest memory.
    #[error(transparent)]
    Memory(#[from] crate::memory::MemoryError),
    /// KVM VM setup.
    #[error(transparent)]
    Vm(#[from] crate::vstate::vm::VmError),
    /// vCPU setup.
    #[error(transparent)]
    Vcpu(#[from] crate::vstate::vcpu::VcpuError),
    /// Kernel, initrd, command line, zero page.
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    /// Boot page tables / GDT.
    #[error(transparent)]
    Regs(#[from] regs::RegsError),
    /// MP table.
    #[error(transparent)]
    Mptable(#[from] mptable::MptableError),
    /// Device bus.
    #[error(transparent)]
    Bus(#[from] crate::devices::bus::BusError),
    /// virtio-fs backend.
    #[error(transparent)]
    Fs(#[from] crate::devices::virtio::fs::FsError),
    /// vsock backend.
    #[error(transparent)]
    Vsock(#[from] crate::devices::virtio::vsock::unix::MuxerError),
    /// Opening a file, eventfds, threads, epoll, sockets.
    #[error("{0}: {1}")]
    Io(&'static str, std::io::Error),
    /// A KVM ioctl on the VM fd.
    #[error("{0}: {1}")]
    Kvm(&'static str, kvm_ioctls::Error),
    /// The jail or the capability drop.
    #[error(transparent)]
    Confine(#[from] ConfineError),
    /// Building or loading a seccomp filter, or starting a confined thread.
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
}

/// How husk-vmm confines itself once the VM is built; both are on unless a debugging flag
/// ([`husk_vmm_api::VmmArgs`]'s `--no-seccomp`, `--no-jail`) says otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Confinement {
    /// Load a seccomp filter into every thread.
    pub seccomp: bool,
    /// Enter the jail (own mount namespace, minimal root).
    pub jail: bool,
}

impl Default for Confinement {
    fn default() -> Self {
        Self {
            seccomp: true,
            jail: true,
        }
    }
}

/// The directories husk-vmm still uses once the VM runs, which the jail keeps: the vsock
/// socket's (the muxer connects to `<socket>_<port>` there when the guest opens a
/// connection, and the socket is removed at exit), the control socket's (removed at exit)
/// and the console file's when it rotates (it is renamed and reopened). virtiofsd's socket
/// is not among them: the vhost-user connection is made while building the VM.
pub fn jail_dirs(cfg: &VmConfig) -> Vec<PathBuf> {
    let mut files: Vec<&Path> = Vec::new();
    if let Some(v) = &cfg.vsock {
        files.push(&v.socket);
    }
    if let Some(api) = &cfg.api_socket {
        files.push(api);
    }
    if let (SerialOutput::File(p), Some(_)) = (&cfg.serial, cfg.serial_max_bytes) {
        files.push(p);
    }
    files
        .into_iter()
        .filter_map(|f| std::path::absolute(f).ok()?.parent().map(Path::to_path_buf))
        .collect()
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> VmmError {
    move |e| VmmError::Io(what, e)
}

/// Wakes the main loop when an exit is requested.
struct ExitSubscriber(ExitSignal);

impl Subscriber for ExitSubscriber {
    fn fds(&self) -> Vec<RawFd> {
        vec![self.0.eventfd().as_raw_fd()]
    }
    fn handle(&mut self, _fd: RawFd, _ev: EventSet) {
        let _ = self.0.eventfd().read();
    }
}

/// Registers virtio devices on the MMIO bus and the command line.
struct MmioAllocator<'a> {
    vm: &'a Vm,
    mem: &'a GuestMemoryMmap,
    bus: &'a mut Bus,
    cmdline: &'a mut String,
    next: u64,
}

impl MmioAllocator<'_> {
    fn add(&mut self, dev: Arc<Mutex<dyn VirtioDevice>>) -> Result<(), VmmError> {
        let base = layout::MMIO_DEVICES_START + self.next * layout::MMIO_DEVICE_SIZE;
        let gsi = layout::IRQ_BASE + self.next as u32;
        self.next += 1;
        let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(io("eventfd"))?;
        self.vm
            .fd()
            .register_irqfd(&irq, gsi)
            .map_err(|e| VmmError::Kvm("KVM_IRQFD", e))?;
        {
            let d = dev.locked();
            for (i, evt) in d.queue_events().iter().enumerate() {
                self.vm
                    .fd()
                    .register_ioevent(
                        evt,
                        &IoEventAddress::Mmio(base + NOTIFY_REG_OFFSET),
                        i as u32,
                    )
                    .map_err(|e| VmmError::Kvm("KVM_IOEVENTFD", e))?;
            }
        }
        let transport = MmioTransport::new(self.mem.clone(), dev, irq);
        self.bus.insert(
            Arc::new(Mutex::new(transport)),
            base,
            layout::MMIO_DEVICE_SIZE,
        )?;
        self.cmdline
            .push_str(&format!(" virtio_mmio.device=4K@{base:#x}:{gsi}"));
        Ok(())
    }
}

fn serial_output(
    cfg: &SerialOutput,
    max_bytes: Option<u64>,
) -> Result<Box<dyn Write + Send>, VmmError> {
    let opening = || io("opening the serial output file");
    Ok(match (cfg, max_bytes) {
        (SerialOutput::Stdout, _) => Box::new(std::io::stdout()),
        (SerialOutput::None, _) => Box::new(std::io::sink()),
        (SerialOutput::File(p), Some(max)) => {
            Box::new(CappedFile::open(p, max).map_err(opening())?)
        }
        (SerialOutput::File(p), None) => Box::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(opening())?,
        ),
    })
}

/// Builds the VM described by `cfg`, confines husk-vmm (jail, capabilities, then a seccomp
/// filter per thread, as `confinement` allows), runs the VM and returns the exit reason.
///
/// The order matters: everything that opens files or sockets happens while building; the
/// jail and the capability drop come next, while the main thread is still the only one;
/// then each thread starts and loads its own filter, the main thread last.
pub fn run_vm(cfg: &VmConfig, confinement: Confinement) -> Result<ExitReason, VmmError> {
    let filters = if confinement.seccomp {
        ThreadFilters::compile()?
    } else {
        tracing::warn!("--no-seccomp: husk-vmm runs without seccomp filters (debugging only)");
        ThreadFilters::disabled()
    };
    let metrics = Arc::new(Metrics::default());
    let exit = ExitSignal::new().map_err(io("eventfd"))?;
    let control = Arc::new(VcpuControl::default());
    install_kick_handler().map_err(io("installing the vCPU kick handler"))?;

    let mem_size = cfg.memory_mib << 20;
    let mem = create_guest_memory(mem_size)?;
    let vm = Vm::new()?;
    vm.register_memory(&mem)?;

    // Devices.
    let mut pio = Bus::new();
    let mut mmio = Bus::new();
    let serial_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(io("eventfd"))?;
    vm.fd()
        .register_irqfd(&serial_irq, layout::SERIAL_IRQ)
        .map_err(|e| VmmError::Kvm("KVM_IRQFD", e))?;
    let serial = Arc::new(Mutex::new(SerialDevice::new(
        serial_irq,
        serial_output(&cfg.serial, cfg.serial_max_bytes)?,
        metrics.clone(),
    )));
    pio.insert(serial.clone(), u64::from(layout::SERIAL_PORT), 8)?;
    pio.insert(
        Arc::new(Mutex::new(I8042::new(exit.clone()))),
        u64::from(layout::I8042_PORT),
        5,
    )?;

    let mut cmdline = cfg.cmdline.clone();
    let mut event_loop = EventLoop::new().map_err(io("epoll"))?;
    event_loop
        .add(Box::new(ExitSubscriber(exit.clone())))
        .map_err(io("epoll"))?;
    {
        let mut alloc = MmioAllocator {
            vm: &vm,
            mem: &mem,
            bus: &mut mmio,
            cmdline: &mut cmdline,
            next: 0,
        };
        if let Some(v) = &cfg.vsock {
            let muxer = VsockMuxer::new(&v.socket, u64::from(v.guest_cid), metrics.clone())?;
            let dev = VsockDevice::new(u64::from(v.guest_cid), muxer, metrics.clone())
                .map_err(io("eventfd"))?;
            let dev = Arc::new(Mutex::new(dev));
            alloc.add(dev.clone())?;
            event_loop
                .add(Box::new(VsockEventHandler::new(dev)))
                .map_err(io("epoll"))?;
        }
        for f in &cfg.fs {
            let dev = FsDevice::new(
                &f.socket,
                &f.tag,
                f.num_request_queues,
                f.queue_size,
                Duration::from_secs(5),
            )?;
            alloc.add(Arc::new(Mutex::new(dev)))?;
        }
    }

    // Boot.
    let mut kernel = File::open(&cfg.kernel).map_err(io("opening the kernel"))?;
    let entry = boot::load_kernel(&mem, &mut kernel)?;
    let initrd = match &cfg.initrd {
        Some(p) => {
            let mut f = File::open(p).map_err(io("opening the initrd"))?;
            Some(boot::load_initrd(&mem, mem_size, &mut f)?)
        }
        None => None,
    };
    tracing::debug!(
        "kernel and initrd loaded after {:?}",
        metrics.started.elapsed()
    );
    let cmdline_len = boot::load_command_line(&mem, &cmdline)?;
    boot::write_boot_params(
        &mem,
        &boot::build_boot_params(mem_size, cmdline_len, initrd),
    )?;
    regs::write_gdt_idt(&mem)?;
    regs::write_page_tables(&mem)?;
    mptable::setup_mptable(&mem, cfg.vcpus)?;
    tracing::debug!("cmdline: {cmdline}");

    // vCPUs.
    let cpuid = vm.supported_cpuid()?;
    let mut vcpus = Vec::with_capacity(usize::from(cfg.vcpus));
    for id in 0..cfg.vcpus {
        vcpus.push(Vcpu::new(&vm, id, cfg.vcpus, entry, &cpuid)?);
    }

    let mut api = match &cfg.api_socket {
        Some(p) => Some(
            ApiServer::bind(
                p,
                ApiHandler::new(control.clone(), metrics.clone(), exit.clone()),
            )
            .map_err(io("binding the API socket"))?,
        ),
        None => None,
    };

    confine_process(&jail_dirs(cfg), confinement.jail)?;

    tracing::info!(
        "VM built in {:?} (kernel entry {entry:#x}, {} vCPUs, {} MiB)",
        metrics.started.elapsed(),
        cfg.vcpus,
        cfg.memory_mib
    );
    for (i, vcpu) in vcpus.into_iter().enumerate() {
        let (pio, mmio, control, exit, metrics) = (
            pio.clone(),
            mmio.clone(),
            control.clone(),
            exit.clone(),
            metrics.clone(),
        );
        seccomp::spawn(
            format!("husk-vcpu{i}"),
            ThreadKind::Vcpu,
            &filters,
            move || vcpu.run(pio, mmio, control, exit, metrics),
        )?;
    }
    if let Some(api) = &mut api {
        api.serve(&filters)?;
    }
    filters.load(ThreadKind::EventLoop)?;

    while exit.reason() == ExitReason::None {
        event_loop.run_once(-1).map_err(io("epoll_wait"))?;
    }
    let reason = exit.reason();
    control.exit();
    control.wait_threads_gone(Duration::from_millis(500));
    serial.locked().flush();
    // Keep guest memory and the VM alive until the vCPUs are gone.
    drop(vm);
    drop(mem);
    Ok(reason)
}

#[cfg(test)]
mod tests {
    use super::*;
    use husk_vmm_api::{FsConfig, VsockConfig};

    #[test]
    fn jail_keeps_the_directories_used_after_setup_and_no_other() {
        let mut cfg = VmConfig::new("/boot/vmlinux");
        cfg.vsock = Some(VsockConfig {
            socket: "/run/husk/pod/vsock.sock".into(),
            guest_cid: 3,
        });
        cfg.api_socket = Some("/run/husk/api/vmm.sock".into());
        cfg.fs = vec![FsConfig::new("/run/virtiofsd/fs.sock", "rootfs")];
        cfg.serial = SerialOutput::File("/var/log/husk/console.log".into());
        cfg.serial_max_bytes = Some(1 << 20);
        let p = PathBuf::from;
        assert_eq!(
            jail_dirs(&cfg),
            vec![p("/run/husk/pod"), p("/run/husk/api"), p("/var/log/husk")]
        );
        // A console file that never rotates is never reopened; virtiofsd's socket, the
        // kernel's and initrd's directories are never needed.
        cfg.serial_max_bytes = None;
        assert_eq!(
            jail_dirs(&cfg),
            vec![p("/run/husk/pod"), p("/run/husk/api")]
        );
    }
}

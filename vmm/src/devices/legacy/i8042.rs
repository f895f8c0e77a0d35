//! i8042 keyboard controller.
//!
//! The CPU reset command (0xFE on port 0x64, what `reboot=k` writes) goes to vm-superio's
//! `I8042Device`, which fires the reset trigger. Around it, this models just enough of the
//! controller for the guest's i8042 driver to probe it without spinning: a status register
//! whose output-buffer-full bit follows a small output queue, the command byte (CTR), the
//! self tests and the output port. Without that, every `i8042_command()` polls the status
//! port 10,000 times before timing out, which costs thousands of VM exits per boot.

use std::collections::VecDeque;

use vm_superio::{I8042Device, Trigger};

use crate::devices::bus::BusDevice;

const DATA: u64 = 0;
const COMMAND: u64 = 4;

/// Status register bits.
const SB_OUT_DATA_AVAIL: u8 = 0x01;
const SB_SYSTEM_FLAG: u8 = 0x04;
const SB_LAST_WAS_COMMAND: u8 = 0x08;

/// Controller commands.
const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_AUX_TEST: u8 = 0xa9;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_READ_OUTP: u8 = 0xd0;
const CMD_WRITE_OUTP: u8 = 0xd1;
const CMD_RESET_CPU: u8 = 0xfe;

/// Replies.
const SELF_TEST_OK: u8 = 0x55;
const PORT_TEST_OK: u8 = 0x00;
/// Keyboard command acknowledgement.
const KBD_ACK: u8 = 0xfa;
/// Initial command byte: keyboard interrupt enabled, system flag, translation.
const DEFAULT_CTR: u8 = 0x45;
const MAX_OUT: usize = 16;

/// The i8042 at ports 0x60..=0x64.
pub struct I8042<T: Trigger> {
    reset: I8042Device<T>,
    status: u8,
    ctr: u8,
    outp: u8,
    pending_write: Option<u8>,
    out: VecDeque<u8>,
}

impl<T: Trigger> I8042<T> {
    /// `reset` is triggered when the guest asks for a CPU reset.
    pub fn new(reset: T) -> Self {
        Self {
            reset: I8042Device::new(reset),
            status: SB_SYSTEM_FLAG,
            ctr: DEFAULT_CTR,
            outp: 0,
            pending_write: None,
            out: VecDeque::new(),
        }
    }

    fn push(&mut self, b: u8) {
        if self.out.len() < MAX_OUT {
            self.out.push_back(b);
        }
    }

    fn status(&self) -> u8 {
        let obf = if self.out.is_empty() {
            0
        } else {
            SB_OUT_DATA_AVAIL
        };
        self.status | obf
    }

    fn command(&mut self, cmd: u8) {
        self.status |= SB_LAST_WAS_COMMAND;
        match cmd {
            CMD_READ_CTR => self.push(self.ctr),
            CMD_WRITE_CTR | CMD_WRITE_OUTP => self.pending_write = Some(cmd),
            CMD_READ_OUTP => self.push(self.outp),
            CMD_SELF_TEST => self.push(SELF_TEST_OK),
            CMD_KBD_TEST | CMD_AUX_TEST => self.push(PORT_TEST_OK),
            CMD_RESET_CPU => {
                if let Err(e) = self.reset.write(COMMAND as u8, cmd) {
                    tracing::warn!("i8042 reset signal failed: {e:?}");
                }
            }
            _ => {}
        }
    }

    fn data(&mut self, v: u8) {
        self.status &= !SB_LAST_WAS_COMMAND;
        match self.pending_write.take() {
            Some(CMD_WRITE_CTR) => self.ctr = v,
            Some(_) => self.outp = v,
            // A command for the keyboard itself: there is none, but acknowledge it so the
            // driver does not wait.
            None => self.push(KBD_ACK),
        }
    }
}

impl<T: Trigger + Send> BusDevice for I8042<T> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if data.len() != 1 {
            return;
        }
        data[0] = match offset {
            COMMAND => self.status(),
            DATA => self.out.pop_front().unwrap_or(0),
            _ => 0,
        };
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() != 1 {
            return;
        }
        match offset {
            COMMAND => self.command(data[0]),
            DATA => self.data(data[0]),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::legacy::EventFdTrigger;
    use vmm_sys_util::eventfd::EventFd;

    fn dev() -> (I8042<EventFdTrigger>, EventFd) {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        (I8042::new(EventFdTrigger(evt.try_clone().unwrap())), evt)
    }

    fn rd(d: &mut I8042<EventFdTrigger>, off: u64) -> u8 {
        let mut b = [0u8];
        d.read(off, &mut b);
        b[0]
    }

    #[test]
    fn reset_command_fires_event() {
        let (mut d, evt) = dev();
        d.write(COMMAND, &[CMD_READ_CTR]);
        // Nothing signalled yet: the non-blocking eventfd has no count to read.
        let err = evt.read().expect_err("no reset before the reset command");
        assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock, "{err}");
        d.write(COMMAND, &[CMD_RESET_CPU]);
        assert_eq!(evt.read().unwrap(), 1);
    }

    #[test]
    fn ctr_round_trip_and_obf() {
        let (mut d, _) = dev();
        assert_eq!(rd(&mut d, COMMAND) & SB_OUT_DATA_AVAIL, 0);
        d.write(COMMAND, &[CMD_READ_CTR]);
        assert_ne!(rd(&mut d, COMMAND) & SB_OUT_DATA_AVAIL, 0);
        assert_eq!(rd(&mut d, DATA), DEFAULT_CTR);
        assert_eq!(rd(&mut d, COMMAND) & SB_OUT_DATA_AVAIL, 0);
        d.write(COMMAND, &[CMD_WRITE_CTR]);
        d.write(DATA, &[0x20]);
        d.write(COMMAND, &[CMD_READ_CTR]);
        assert_eq!(rd(&mut d, DATA), 0x20);
    }

    #[test]
    fn self_test_and_keyboard_ack() {
        let (mut d, _) = dev();
        d.write(COMMAND, &[CMD_SELF_TEST]);
        assert_eq!(rd(&mut d, DATA), SELF_TEST_OK);
        d.write(DATA, &[0xff]);
        assert_eq!(rd(&mut d, DATA), KBD_ACK);
        // Odd sizes are ignored; the queue is bounded.
        d.write(DATA, &[1, 2]);
        for _ in 0..100 {
            d.write(COMMAND, &[CMD_SELF_TEST]);
        }
        let mut n = 0;
        while rd(&mut d, COMMAND) & SB_OUT_DATA_AVAIL != 0 {
            rd(&mut d, DATA);
            n += 1;
        }
        assert_eq!(n, MAX_OUT);
    }
}

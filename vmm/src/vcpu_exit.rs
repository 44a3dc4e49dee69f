//! What the VMM does with each vCPU exit: a pure function of the exit and the bus, so unit
//! tests drive it with synthetic exits and no VM.

use crate::devices::{DeviceEvent, FaultReport, MmioBus};
use crate::hypervisor::VmExit;

/// Why a vCPU stopped for good.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stop {
    /// The guest asked to exit with this code.
    Exited(u32),
    /// The guest kernel reported an exception.
    GuestFault(FaultReport),
    /// Triple fault (or explicit shutdown, x86_64).
    Shutdown,
    /// PSCI `SYSTEM_OFF` (arm64).
    PoweredOff,
    /// PSCI `SYSTEM_RESET` (arm64).
    Reset,
    /// An access to guest-physical `addr`, which neither memory nor a device backs.
    WildAccess { addr: u64, write: bool },
    /// The VMM interrupted the vCPU (deadline, or another vCPU stopped the VM).
    Kicked,
    /// An exit the VMM does not handle.
    Unhandled(String),
}

/// Keep running the vCPU, or stop it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitAction {
    Resume,
    Stop(Stop),
}

/// Handles one exit: MMIO goes to the bus; everything else stops the vCPU with a reason.
pub fn handle_exit(exit: VmExit<'_>, bus: &MmioBus) -> ExitAction {
    match exit {
        VmExit::MmioWrite { addr, data } => match bus.find(addr) {
            Some((dev, offset)) => match dev.write(offset, data) {
                Some(DeviceEvent::Exit(code)) => ExitAction::Stop(Stop::Exited(code)),
                Some(DeviceEvent::Fault(report)) => ExitAction::Stop(Stop::GuestFault(report)),
                None => ExitAction::Resume,
            },
            None => ExitAction::Stop(Stop::WildAccess { addr, write: true }),
        },
        VmExit::MmioRead { addr, data } => match bus.find(addr) {
            Some((dev, offset)) => {
                dev.read(offset, data);
                ExitAction::Resume
            }
            None => ExitAction::Stop(Stop::WildAccess { addr, write: false }),
        },
        VmExit::Shutdown => ExitAction::Stop(Stop::Shutdown),
        VmExit::PowerOff => ExitAction::Stop(Stop::PoweredOff),
        VmExit::Reset => ExitAction::Stop(Stop::Reset),
        VmExit::Interrupted => ExitAction::Stop(Stop::Kicked),
        VmExit::Halt => ExitAction::Stop(Stop::Unhandled("hlt in guest ring 0".into())),
        VmExit::IoIn { port, .. } | VmExit::IoOut { port, .. } => ExitAction::Stop(
            Stop::Unhandled(format!("port I/O on {port:#x} (no port devices)")),
        ),
        VmExit::FailEntry { reason } => ExitAction::Stop(Stop::Unhandled(format!(
            "VM entry failed (reason {reason:#x})"
        ))),
        VmExit::Other(what) => ExitAction::Stop(Stop::Unhandled(what.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::{Console, Control};
    use std::sync::Arc;

    fn bus() -> (MmioBus, Arc<Console>) {
        let console = Arc::new(Console::default());
        let mut bus = MmioBus::default();
        bus.insert(0x1000, 0x1000, console.clone()).unwrap();
        bus.insert(0x2000, 0x1000, Arc::new(Control::default()))
            .unwrap();
        (bus, console)
    }

    #[test]
    fn console_writes_resume_and_exit_writes_stop() {
        let (bus, console) = bus();
        let w = |addr, data: &[u8]| handle_exit(VmExit::MmioWrite { addr, data }, &bus);
        assert_eq!(w(0x1000, b"ok\n"), ExitAction::Resume);
        assert_eq!(console.lines(), ["ok"]);
        assert_eq!(
            w(0x2000, &7u32.to_le_bytes()),
            ExitAction::Stop(Stop::Exited(7))
        );
        assert_eq!(w(0x2004, &[1]), ExitAction::Resume);
    }

    #[test]
    fn unbacked_addresses_and_odd_exits_stop_with_their_reason() {
        let (bus, _) = bus();
        let mut buf = [0xffu8; 4];
        assert_eq!(
            handle_exit(
                VmExit::MmioRead {
                    addr: 0x9000,
                    data: &mut buf
                },
                &bus
            ),
            ExitAction::Stop(Stop::WildAccess {
                addr: 0x9000,
                write: false
            })
        );
        assert_eq!(
            handle_exit(
                VmExit::MmioRead {
                    addr: 0x1000,
                    data: &mut buf
                },
                &bus
            ),
            ExitAction::Resume
        );
        assert_eq!(buf, [0; 4]);
        assert_eq!(
            handle_exit(VmExit::Shutdown, &bus),
            ExitAction::Stop(Stop::Shutdown)
        );
        assert_eq!(
            handle_exit(VmExit::PowerOff, &bus),
            ExitAction::Stop(Stop::PoweredOff)
        );
        assert_eq!(
            handle_exit(VmExit::Reset, &bus),
            ExitAction::Stop(Stop::Reset)
        );
        assert_eq!(
            handle_exit(VmExit::Interrupted, &bus),
            ExitAction::Stop(Stop::Kicked)
        );
        assert!(matches!(
            handle_exit(VmExit::IoOut { port: 0x3f8, data: &[0] }, &bus),
            ExitAction::Stop(Stop::Unhandled(m)) if m.contains("0x3f8")
        ));
        assert!(matches!(
            handle_exit(VmExit::FailEntry { reason: 0x21 }, &bus),
            ExitAction::Stop(Stop::Unhandled(_))
        ));
    }
}

//! The FlexServe host: the VMM (hypervisor layer, devices, vCPU threads) and the pieces the
//! `flexserve` binary is built from.

pub mod arch;
pub mod devices;
pub mod digest_cache;
pub mod elf_loader;
pub mod guest_images;
pub mod guest_kernels;
pub mod hypervisor;
pub mod machine;
pub mod memory_broker;
pub mod protected_vm;
pub mod serve;
pub mod size;
pub mod text_stream;
mod thread_cpu;
pub mod vcpu_exit;

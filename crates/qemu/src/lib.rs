//! QEMU adapter: VM specs, a QMP client and the lifecycle of one QEMU process per VM.

pub mod capture;
pub mod guard;
mod img;
mod live;
pub mod private;
pub mod qmp;
pub mod restore;
pub mod spec;
pub mod stream;
pub mod vm;

pub use capture::Mode;
pub use qmp::{Qmp, QmpError};
pub use spec::{Accel, Boot, Disk, DiskFormat, Nic, NicNet, SpecError, VmSpec};
pub use vm::{Running, Status, VmError};

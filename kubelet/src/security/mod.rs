//! Pod security as upstream's kubelet enforces it: the seccomp and AppArmor profiles sent to
//! the runtime ([`seccomp`], [`apparmor`]), and which sysctls a pod may set ([`sysctl`]).

pub mod apparmor;
pub mod seccomp;
pub mod sysctl;

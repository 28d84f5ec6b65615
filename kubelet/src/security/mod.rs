//! Pod security as upstream's kubelet enforces it: the seccomp and AppArmor profiles sent to
//! the runtime ([`seccomp`], [`apparmor`]), and which sysctls a pod may set ([`sysctl`]).

pub(crate) mod apparmor;
pub(crate) mod seccomp;
pub(crate) mod sysctl;

//! A pod's view of names on the network (upstream `pkg/kubelet/network/dns` and the hosts
//! file of `kubelet_pods.go`): its resolver configuration ([`dns`]) and the kubelet-managed
//! `/etc/hosts` ([`hosts`]).

pub(crate) mod dns;
pub(crate) mod hosts;

//! End-to-end tests: the real agent binary, the real kernel, real sockets in
//! throwaway network namespaces. Privileged tests run as root (always in CI)
//! and print a skip reason otherwise; see `support::privileged`.
mod advisor;
mod connect_result;
mod containers;
mod deploy;
mod dns;
mod falco_rules;
mod faults;
mod flows;
mod identity;
mod ignore;
mod kernel_counters;
mod kernel_hooks;
mod prometheus;
mod quarantine;
mod quarantine_containers;
mod quarantine_respond;
mod rules;
mod sockets;
mod support;

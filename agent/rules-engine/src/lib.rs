//! Falco-compatible rule engine (being built).

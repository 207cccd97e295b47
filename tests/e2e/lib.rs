//! Empty: the suite is the `e2e` test target (`main.rs`).

//! The process behind a socket, for records that arrive without one: flow
//! ends and DNS answers are seen in softirq context, so they take the
//! process of the socket's connect or send event, joined by socket cookie
//! (the connect or send is always ahead of them in the ring buffer).
use crate::pipeline::decode::{Comm, EgressAttempt};

/// The process fields of an attempt that a later record of the same
/// socket borrows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketOwner {
    pub tgid: u32,
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    pub comm: Comm,
    pub exec_id: u64,
    pub ppid: u32,
    pub netns_cookie: u64,
}

impl SocketOwner {
    pub fn of(a: &EgressAttempt) -> SocketOwner {
        SocketOwner {
            tgid: a.tgid,
            tid: a.tid,
            uid: a.uid,
            gid: a.gid,
            comm: a.comm,
            exec_id: a.exec_id,
            ppid: a.ppid,
            netns_cookie: a.netns_cookie,
        }
    }

    /// Gives `a` this process (its own cgroup and destination stay).
    pub fn apply(&self, a: &mut EgressAttempt) {
        a.tgid = self.tgid;
        a.tid = self.tid;
        a.uid = self.uid;
        a.gid = self.gid;
        a.comm = self.comm;
        a.exec_id = self.exec_id;
        a.ppid = self.ppid;
        a.netns_cookie = self.netns_cookie;
    }
}

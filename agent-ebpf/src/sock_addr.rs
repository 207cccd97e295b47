//! Kernel hook: cgroup sock_addr programs (`BPF_CGROUP_INET{4,6}_CONNECT`,
//! `BPF_CGROUP_UDP{4,6}_SENDMSG`), attached to the cgroup v2 root.
//!
//! Why this hook: the kernel runs it after it has copied the sockaddr out of
//! user memory, so a racing thread cannot change the address after we look
//! (the TOCTOU that syscall-entry tracers suffer); it runs for io_uring
//! submissions too, because they reach the same socket code; and its context,
//! `struct bpf_sock_addr`, is stable UAPI, so no CO-RE is needed. The UDP
//! sendmsg hook fires only when the send names a destination, which is exactly
//! the unconnected case a connect hook cannot see.
//!
//! Monitor only: every program returns ALLOW whatever happens.
use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        generated::{
            bpf_get_current_cgroup_id, bpf_get_netns_cookie, bpf_get_socket_cookie,
            bpf_ktime_get_ns,
        },
    },
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use egret_common::{AF_INET, AF_INET6, EgressEvent, FLAG_V4_MAPPED, Hook, RecordKind};

use crate::ignore::is_v4_mapped;
use crate::maps::{COUNTERS, EVENTS, PROCS};
use crate::net::ALLOW;

#[cgroup_sock_addr(connect4)]
pub fn egret_connect4(ctx: SockAddrContext) -> i32 {
    observe(&ctx, Hook::Connect4)
}

#[cgroup_sock_addr(connect6)]
pub fn egret_connect6(ctx: SockAddrContext) -> i32 {
    observe(&ctx, Hook::Connect6)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn egret_sendmsg4(ctx: SockAddrContext) -> i32 {
    observe(&ctx, Hook::Sendmsg4)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn egret_sendmsg6(ctx: SockAddrContext) -> i32 {
    observe(&ctx, Hook::Sendmsg6)
}

#[inline(always)]
fn observe(ctx: &SockAddrContext, hook: Hook) -> i32 {
    // The only failure is a missing counters slot, which cannot happen for a
    // valid hook index; there is nothing to count it in, and we still allow.
    let _ = try_observe(ctx, hook);
    ALLOW
}

enum Outcome {
    Ignored,
    RepeatOfConnect,
    Emitted,
    RingbufFull,
}

#[inline(always)]
fn try_observe(ctx: &SockAddrContext, hook: Hook) -> Result<(), ()> {
    let counters = COUNTERS.get_ptr_mut(hook as u32).ok_or(())?;
    let outcome = emit(ctx, hook);
    // Plain increments are safe enough here: the slot is this CPU's own and
    // cgroup hooks run with migration disabled. (The BPF target offers no
    // 64-bit fetch_add in stable Rust.)
    // SAFETY: `counters` points at this CPU's value for the program's run.
    unsafe {
        (*counters).seen += 1;
        match outcome {
            Outcome::Ignored => (*counters).ignored += 1,
            Outcome::RepeatOfConnect => (*counters).repeat_of_connect += 1,
            Outcome::Emitted => (*counters).emitted += 1,
            Outcome::RingbufFull => (*counters).ringbuf_full += 1,
        }
    }
    Ok(())
}

#[inline(always)]
fn emit(ctx: &SockAddrContext, hook: Hook) -> Outcome {
    let sa = ctx.sock_addr;
    // The verifier allows only 4-byte (or narrower) loads of these fields, so
    // each word is read volatile to stop LLVM from merging loads.
    // SAFETY: `sa` is the context pointer the kernel passed in.
    let (user_port, protocol) = unsafe {
        (
            core::ptr::read_volatile(&raw const (*sa).user_port),
            core::ptr::read_volatile(&raw const (*sa).protocol),
        )
    };
    let mut words = [0u32; 4];
    let is_v6_socket_addr = matches!(hook, Hook::Connect6 | Hook::Sendmsg6);
    if is_v6_socket_addr {
        for (i, word) in words.iter_mut().enumerate() {
            // SAFETY: as above; i < 4 is within user_ip6.
            *word = unsafe { core::ptr::read_volatile(&raw const (*sa).user_ip6[i]) };
        }
    } else {
        // SAFETY: as above.
        words[3] = unsafe { core::ptr::read_volatile(&raw const (*sa).user_ip4) };
        // Stored in network order, so these bytes spell ::ffff:0:0 whatever
        // the host's endianness.
        words[2] = u32::from_ne_bytes([0, 0, 0xff, 0xff]);
    }
    let mut mapped = [0u8; 16];
    for (i, word) in words.iter().enumerate() {
        mapped[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
    }
    let is_v4 = is_v4_mapped(&mapped);

    if matches!(hook, Hook::Sendmsg4 | Hook::Sendmsg6) && is_connected_peer(ctx, &words, user_port)
    {
        return Outcome::RepeatOfConnect;
    }
    // A v6 socket sending to ::ffff:a.b.c.d reaches the *v4* sendmsg hook
    // (the kernel rewrites the address first); the socket family tells.
    // SAFETY: context pointer, 4-byte read.
    let socket_family = unsafe { core::ptr::read_volatile(&raw const (*sa).family) };
    let v4_mapped = is_v4 && (is_v6_socket_addr || socket_family == u32::from(AF_INET6));

    // The ignore table stores IPv4 networks IPv4-mapped, so one lookup
    // covers both families, including v4-mapped destinations on a v6 socket.
    if crate::ignore::ignored(&mapped) {
        return Outcome::Ignored;
    }

    let Some(mut entry) = EVENTS.reserve::<EgressEvent>(0) else {
        return Outcome::RingbufFull;
    };
    let mut daddr = [0u8; 16];
    if is_v4 {
        daddr[..4].copy_from_slice(&mapped[12..16]);
    } else {
        daddr = mapped;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    let tgid = (pid_tgid >> 32) as u32;
    let (exec_id, ppid) = PROCS
        .get_ptr(tgid)
        // SAFETY: map value pointer valid during the program.
        .map(|state| unsafe { ((*state).exec_id, (*state).ppid) })
        .unwrap_or((0, 0));
    // SAFETY: these helpers only read kernel state for the current context.
    let (mono_ns, cgroup_id, netns_cookie, socket_cookie) = unsafe {
        (
            bpf_ktime_get_ns(),
            bpf_get_current_cgroup_id(),
            bpf_get_netns_cookie(ctx.as_ptr()),
            bpf_get_socket_cookie(ctx.as_ptr()),
        )
    };
    entry.write(EgressEvent {
        kind: RecordKind::Egress as u8,
        hook: hook as u8,
        family: if is_v4 { AF_INET } else { AF_INET6 },
        protocol: protocol as u8,
        dport: u16::from_be(user_port as u16),
        flags: if v4_mapped { FLAG_V4_MAPPED } else { 0 },
        _pad0: 0,
        tgid,
        pid: pid_tgid as u32,
        uid: uid_gid as u32,
        gid: (uid_gid >> 32) as u32,
        mono_ns,
        exec_id,
        ppid,
        quarantine: 0,
        cgroup_id,
        netns_cookie,
        socket_cookie,
        daddr,
        comm: bpf_get_current_comm().unwrap_or([0u8; 16]),
    });
    entry.submit(0);
    if matches!(hook, Hook::Connect4 | Hook::Connect6) {
        crate::connect_result::remember(pid_tgid, socket_cookie);
        crate::flows::connect_reported(socket_cookie);
    }
    Outcome::Emitted
}

/// True when a UDP send names the very peer the socket is connected to. The
/// kernel runs the sendmsg hook for those too (always, for connected
/// v4-mapped sockets), which would re-report every datagram of a flow the
/// connect hook already reported.
#[inline(always)]
fn is_connected_peer(ctx: &SockAddrContext, words: &[u32; 4], user_port: u32) -> bool {
    const TCP_ESTABLISHED: u32 = 1;
    // SAFETY: the verifier types ctx->sk as a non-null PTR_TO_SOCKET for
    // sock_addr programs; state, dst_port and dst_ip* are readable UAPI fields.
    unsafe {
        let sk = core::ptr::read_volatile(&raw const (*ctx.sock_addr).__bindgen_anon_1.sk);
        if core::ptr::read_volatile(&raw const (*sk).state) != TCP_ESTABLISHED {
            return false;
        }
        if core::ptr::read_volatile(&raw const (*sk).dst_port) != user_port as u16 {
            return false;
        }
        if words[2] == u32::from_ne_bytes([0, 0, 0xff, 0xff]) && words[0] == 0 && words[1] == 0 {
            return core::ptr::read_volatile(&raw const (*sk).dst_ip4) == words[3];
        }
        for (i, word) in words.iter().enumerate() {
            if core::ptr::read_volatile(&raw const (*sk).dst_ip6[i]) != *word {
                return false;
            }
        }
        true
    }
}

//! The tp_btf programs' memory: a ring of the most recent connections in a plain array, indexed
//! by socket cookie, and the notes of the state before CLOSE.

use aya_ebpf::{cty::c_void, helpers::generated::bpf_get_socket_cookie};
use rstwatch_common::{Owner, ResetEvent, tcp_state};

use super::{
    Conns, apply, apply_owner, current_owner_into, listener_key, listener_key_at, listener_owner_into,
    service_port_of,
};
use crate::{
    clock,
    maps::{CLOSE_NOTE_SLOTS, CLOSE_NOTES, CONN_SLOTS, CONNS, ConnSlot, LISTENERS, slot_flag},
    read::{Btf, Kernel, conf},
    socket, words,
};

impl Conns for Btf {
    /// A load where the socket has its cookie already (every state change after its birth, and
    /// most resets): the helper call cost about 60 ns more per CLOSE here. The helper makes one
    /// for a new socket, or one we never saw.
    #[inline(always)]
    fn cookie(sk: u64) -> u64 {
        match Btf::read::<u64>(sk, conf!(sk_cookie)) {
            0 => unsafe { bpf_get_socket_cookie(sk as *mut c_void) },
            cookie => cookie,
        }
    }

    #[inline(always)]
    fn recall_into(sk: u64, cookie: u64, ev: &mut ResetEvent) {
        if ev.key.state == tcp_state::CLOSE {
            ev.key.prior_state = close_note(cookie);
        }
        let Some((tag, birth_jiffies)) = copy_slot(cookie, &mut ev.owner) else {
            return;
        };
        let passive = tag & slot_flag::PASSIVE != 0;
        apply(
            ev,
            birth_jiffies,
            passive as u8,
            (tag & slot_flag::OWNER_KNOWN != 0) as u8,
        );
        if passive {
            // Unhashed by now, so the port comes from `inet_sport`, not `skc_num`.
            listener_owner_into::<Btf>(sk, socket::local_port::<Btf>(Btf::tcp_sock(sk)), ev);
        }
    }

    /// Written in place, tag last: a reader that finds the tag finds the rest.
    #[inline(always)]
    fn born_in_owner(sk: u64, listening: bool) {
        let cookie = Self::cookie(sk);
        let Some(slot) = open_slot(cookie) else { return };
        current_owner_into::<Btf>(&mut slot.owner);
        if listening {
            let _ = LISTENERS.insert(&listener_key::<Btf>(sk), &slot.owner, 0);
        }
        close_slot(slot, cookie, slot_flag::OWNER_KNOWN);
    }

    /// Only the birth: looking up the listener's owner for every connection cost more than
    /// looking it up for the few that reset (`listener_owner_into`).
    #[inline(always)]
    fn accepted(sk: u64) {
        let cookie = Self::cookie(sk);
        let Some(slot) = open_slot(cookie) else { return };
        close_slot(slot, cookie, slot_flag::PASSIVE);
    }

    #[inline(always)]
    fn timewait_owner_into(sk: u64, cookie: u64, ev: &mut ResetEvent) {
        let Some((tag, _)) = copy_slot(cookie, &mut ev.owner) else {
            return;
        };
        if tag & slot_flag::OWNER_KNOWN != 0 {
            apply_owner(ev);
        } else if tag & slot_flag::PASSIVE != 0 {
            // A time-wait socket is hashed: `skc_num` is its port.
            listener_owner_into::<Btf>(sk, Btf::read::<u16>(sk, conf!(sk_num)), ev);
        }
    }

    #[inline(always)]
    fn closed(sk: u64, old: u8) {
        let cookie = Self::cookie(sk);
        if let Some(note) = CLOSE_NOTES.get_ptr_mut(note_of(cookie)) {
            unsafe { core::ptr::write_volatile(note, cookie << 4 | (old as u64 & 0xf)) };
        }
    }

    #[inline(always)]
    fn identity(_sk: u64, cookie: u64) -> u64 {
        cookie
    }

    const ERRORS_NEED_NOTE: bool = false;
}

/// The owner of a full socket and the port that names its service, for the tp_btf socket-error
/// program (the classic one finds them through the reset's per-CPU note).
#[inline(always)]
pub fn owner_and_port_btf(sk: u64, local_port: u16, remote_port: u16) -> (Owner, u16) {
    let guess = socket::guess_service_port(local_port, remote_port);
    let mut owner = Owner::default();
    let Some((tag, birth_jiffies)) = copy_slot(Btf::cookie(sk), &mut owner) else {
        return (owner, guess);
    };
    let passive = tag & slot_flag::PASSIVE != 0;
    if passive && let Some(listener) = unsafe { LISTENERS.get(&listener_key_at::<Btf>(sk, local_port)) } {
        words::copy(&mut owner, listener);
    }
    let port = service_port_of(passive as u8, birth_jiffies, local_port, remote_port, guess);
    (owner, port)
}

/// The slot for a connection born now, opened for rewriting (readers that copied from it see its
/// tag change) with its birth set; `close_slot` publishes it.
#[inline(always)]
fn open_slot(cookie: u64) -> Option<&'static mut ConnSlot> {
    let slot = unsafe { &mut *CONNS.get_ptr_mut(slot_index(cookie))? };
    unsafe { core::ptr::write_volatile(&mut slot.tag, 0) };
    core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst);
    slot.birth_jiffies = clock::jiffies();
    Some(slot)
}

#[inline(always)]
fn close_slot(slot: &mut ConnSlot, cookie: u64, flags: u64) {
    core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst);
    unsafe { core::ptr::write_volatile(&mut slot.tag, cookie << 8 | flags) };
}

/// A connection's slot: its cookie modulo the table size. The kernel hands out cookies in
/// sequence (per-CPU batches), so consecutive connections fill consecutive slots: the table is a
/// ring of the most recent connections, walked in order, which keeps each store on a page and a
/// cache line the previous ones already touched (a hashed slot cost a TLB and a cache miss per
/// connection, about as much as everything else the program does). A slot is reused only after
/// CONN_SLOTS newer cookies.
#[inline(always)]
fn slot_index(cookie: u64) -> u32 {
    cookie as u32 & (CONN_SLOTS - 1)
}

#[inline(always)]
fn note_of(cookie: u64) -> u32 {
    cookie as u32 & (CLOSE_NOTE_SLOTS - 1)
}

/// The state a socket left for CLOSE, if the note for its cookie is still there (0 otherwise).
#[inline(always)]
fn close_note(cookie: u64) -> u8 {
    let Some(note) = CLOSE_NOTES.get_ptr(note_of(cookie)) else {
        return 0;
    };
    let note = unsafe { core::ptr::read_volatile(note) };
    if note >> 4 == cookie {
        (note & 0xf) as u8
    } else {
        0
    }
}

/// The slot of `cookie` and its tag, if it still holds that connection.
#[inline(always)]
fn slot_of(cookie: u64) -> Option<(*const ConnSlot, u64)> {
    let slot = CONNS.get_ptr(slot_index(cookie))?;
    let tag = unsafe { core::ptr::read_volatile(&(*slot).tag) };
    (tag >> 8 == cookie).then_some((slot, tag))
}

/// What the slot of `cookie` holds: its tag and birth (jiffies), and its owner copied into `owner`
/// when the tag says it is known. None when the slot holds another connection, or was rewritten while we
/// copied (`owner` is then zeroed): every reader goes through here.
#[inline(always)]
fn copy_slot(cookie: u64, owner: &mut Owner) -> Option<(u64, u64)> {
    let (slot, tag) = slot_of(cookie)?;
    let birth_jiffies = unsafe { (*slot).birth_jiffies };
    if tag & slot_flag::OWNER_KNOWN != 0 {
        words::copy(owner, unsafe { &(*slot).owner });
    }
    if !unchanged(slot, tag) {
        words::zero(owner);
        return None;
    }
    Some((tag, birth_jiffies))
}

/// A writer reusing a slot zeroes its tag first: a changed tag after reading means the copy may
/// be half another connection's. The fence keeps the copy's loads before this one.
#[inline(always)]
fn unchanged(slot: *const ConnSlot, tag: u64) -> bool {
    core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst);
    unsafe { core::ptr::read_volatile(&(*slot).tag) == tag }
}

//! The classic programs' memory: they cannot have a socket cookie generated, so they keep LRU
//! maps keyed by socket address (and by 4-tuple for the owners of time-wait sockets).

use core::mem::MaybeUninit;

use rstwatch_common::{ConnInfo, Owner, ResetEvent, tcp_state};

use super::{Conns, apply, apply_owner, current_owner_into, listener_key};
use crate::{
    maps::{CLOSED_FLOWS, CONN, LISTENERS},
    read::Probe,
    socket, words,
};

impl Conns for Probe {
    /// Classic programs cannot have a cookie generated; they key by socket address.
    #[inline(always)]
    fn cookie(_sk: u64) -> u64 {
        0
    }

    #[inline(always)]
    fn recall_into(sk: u64, _cookie: u64, ev: &mut ResetEvent) {
        let Some(info) = (unsafe { CONN.get(&sk) }) else {
            return;
        };
        if ev.key.state == tcp_state::CLOSE {
            ev.key.prior_state = info.prior_state;
        }
        words::copy(&mut ev.owner, &info.owner);
        apply(ev, info.birth_jiffies, info.passive, info.owner_known);
    }

    #[inline(always)]
    fn timewait_owner_into(_sk: u64, _cookie: u64, ev: &mut ResetEvent) {
        let flow = crate::reset::flow_of(ev);
        if let Some(owner) = unsafe { CLOSED_FLOWS.get(&flow) } {
            words::copy(&mut ev.owner, owner);
            apply_owner(ev);
        }
    }

    #[inline(always)]
    fn born_in_owner(sk: u64, listening: bool) {
        let mut owner = MaybeUninit::<Owner>::uninit();
        let owner = unsafe { &mut *owner.as_mut_ptr() };
        current_owner_into::<Probe>(owner);
        if listening {
            let _ = LISTENERS.insert(&listener_key::<Probe>(sk), &*owner, 0);
        }
        remember(sk, 0, Some(owner));
    }

    /// The listener's owner, looked up now: the classic programs keep their memory by address.
    #[inline(always)]
    fn accepted(sk: u64) {
        let owner = unsafe { LISTENERS.get(&listener_key::<Probe>(sk)) };
        remember(sk, 1, owner);
    }

    /// Keep the state in the connection's entry, and the owner of a connection that lives on as
    /// a time-wait socket (FIN_WAIT*/CLOSING) by 4-tuple, for the resets that socket may send.
    #[inline(always)]
    fn closed(sk: u64, old: u8) {
        let Some(info) = CONN.get_ptr_mut(&sk) else {
            let info = ConnInfo {
                prior_state: old,
                ..ConnInfo::default()
            };
            let _ = CONN.insert(&sk, &info, 0);
            return;
        };
        let info = unsafe { &mut *info };
        info.prior_state = old;
        if info.owner_known != 0
            && matches!(
                old,
                tcp_state::FIN_WAIT1 | tcp_state::FIN_WAIT2 | tcp_state::CLOSING
            )
        {
            let _ = CLOSED_FLOWS.insert(&socket::flow::<Probe>(sk), &info.owner, 0);
        }
    }

    #[inline(always)]
    fn identity(sk: u64, _cookie: u64) -> u64 {
        sk
    }

    const ERRORS_NEED_NOTE: bool = true;
}

/// A classic program's memory of a connection born now; a freed socket's address is reused, so
/// whatever was there belongs to a dead connection.
#[inline(always)]
fn remember(sk: u64, passive: u8, owner: Option<&Owner>) {
    let mut info = MaybeUninit::<ConnInfo>::uninit();
    let info = unsafe { &mut *info.as_mut_ptr() };
    words::zero(info);
    info.birth_jiffies = crate::clock::jiffies();
    info.passive = passive;
    if let Some(owner) = owner {
        info.owner_known = 1;
        words::copy(&mut info.owner, owner);
    }
    let _ = CONN.insert(&sk, info, 0);
}

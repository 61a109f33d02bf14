//! The reset storm: one socket per attempt, connect() to a closed port (refused), close.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;

use super::{MAX_ERRORS, Options, Start, ThreadResult, sockaddr, spawn_workers, timed};

pub fn spawn(o: &Options, start: &Arc<Start>) -> Result<Vec<std::thread::JoinHandle<Result<ThreadResult>>>> {
    let targets: Arc<Vec<libc::sockaddr_in>> = Arc::new(
        (0..o.ports)
            .map(|k| sockaddr(o.addr, (o.port as u32 + k) as u16))
            .collect(),
    );
    let max = o.max_attempts;
    spawn_workers("storm", o.threads, &o.netns, start, move |t, deadline| {
        timed(|r| storm(r, &targets, t, deadline, max))
    })
}

/// The clock is read every 64 attempts, so the time bound costs nothing measurable.
fn storm(
    r: &mut ThreadResult,
    targets: &[libc::sockaddr_in],
    offset: usize,
    deadline: Instant,
    max_attempts: u64,
) {
    let mut i = offset % targets.len();
    'outer: while r.attempts < max_attempts {
        for _ in 0..64 {
            // SAFETY: plain syscalls on a socket this loop owns.
            unsafe {
                let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
                if fd < 0 {
                    r.error();
                    break 'outer;
                }
                let sa = &targets[i];
                let rc = libc::connect(
                    fd,
                    (sa as *const libc::sockaddr_in).cast(),
                    size_of::<libc::sockaddr_in>() as libc::socklen_t,
                );
                if rc == 0 {
                    r.connected += 1;
                } else if super::errno() == libc::ECONNREFUSED {
                    r.ops += 1;
                } else {
                    r.error();
                }
                libc::close(fd);
            }
            r.attempts += 1;
            i += 1;
            if i == targets.len() {
                i = 0;
            }
            if r.attempts >= max_attempts {
                break 'outer;
            }
        }
        if r.connected > 0 || r.other_errors > MAX_ERRORS || Instant::now() >= deadline {
            break;
        }
    }
}

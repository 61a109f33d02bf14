//! The kernel's view of a socket: its TCP state (TCP_INFO, or the rows of
//! `/proc/thread-self/net/tcp{,6}` for sockets the test holds no fd of), and bounded polling until
//! it reaches the state a scenario needs.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use socket2::Socket;

/// TCP states as numbered by the kernel (`include/net/tcp_states.h`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum TcpState {
    Established = 1,
    SynSent = 2,
    SynRecv = 3,
    FinWait1 = 4,
    FinWait2 = 5,
    TimeWait = 6,
    Close = 7,
    CloseWait = 8,
    LastAck = 9,
    Listen = 10,
    Closing = 11,
    NewSynRecv = 12,
}

impl TcpState {
    pub fn from_u8(v: u8) -> Option<TcpState> {
        use TcpState::*;
        Some(match v {
            1 => Established,
            2 => SynSent,
            3 => SynRecv,
            4 => FinWait1,
            5 => FinWait2,
            6 => TimeWait,
            7 => Close,
            8 => CloseWait,
            9 => LastAck,
            10 => Listen,
            11 => Closing,
            12 => NewSynRecv,
            _ => return None,
        })
    }
}

/// Current TCP state from TCP_INFO.
pub fn tcp_state(s: &Socket) -> Result<TcpState> {
    let mut info = MaybeUninit::<libc::tcp_info>::zeroed();
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: buffer of the right size.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr() as *mut libc::c_void,
            &mut len,
        )
    };
    if rc != 0 {
        bail!("TCP_INFO: {}", io::Error::last_os_error());
    }
    // SAFETY: zero-initialised and filled by the kernel.
    let st = unsafe { info.assume_init() }.tcpi_state;
    TcpState::from_u8(st).with_context(|| format!("unknown tcp state {st}"))
}

/// Poll `cond` every millisecond or so until it holds, at most `timeout`.
pub fn poll_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> Result<bool>) -> Result<()> {
    let start = Instant::now();
    loop {
        if cond()? {
            return Ok(());
        }
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

pub fn wait_state(s: &Socket, want: TcpState, timeout: Duration) -> Result<()> {
    let mut last = None;
    poll_until(&format!("TCP state {want:?}"), timeout, || {
        let st = tcp_state(s)?;
        last = Some(st);
        Ok(st == want)
    })
    .with_context(|| format!("last state {last:?}"))
}

/// One row of /proc/net/tcp{,6}.
#[derive(Clone, Debug)]
pub struct ProcTcp {
    pub local_port: u16,
    pub remote_port: u16,
    pub state: u8,
}

/// Sockets of the calling thread's namespace (full, timewait and request socks all show up).
pub fn proc_tcp_here() -> Result<Vec<ProcTcp>> {
    let mut out = Vec::new();
    for f in ["/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"] {
        let text = match std::fs::read_to_string(f) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("read {f}")),
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() < 4 {
                continue;
            }
            let port = |c: &str| -> Result<u16> {
                let p = c.rsplit(':').next().context("addr")?;
                Ok(u16::from_str_radix(p, 16)?)
            };
            out.push(ProcTcp {
                local_port: port(cols[1])?,
                remote_port: port(cols[2])?,
                state: u8::from_str_radix(cols[3], 16)?,
            });
        }
    }
    Ok(out)
}

/// Wait until the socket (local_port, remote_port) is in `state` in this thread's namespace.
pub fn wait_proc_state(local_port: u16, remote_port: u16, state: TcpState, timeout: Duration) -> Result<()> {
    let mut last = Vec::new();
    poll_until(
        &format!("{local_port}->{remote_port} in {state:?} in /proc/net/tcp"),
        timeout,
        || {
            last = proc_tcp_here()?
                .into_iter()
                .filter(|r| r.local_port == local_port && r.remote_port == remote_port)
                .collect();
            Ok(last.iter().any(|r| r.state == state as u8))
        },
    )
    .with_context(|| format!("last rows {last:?}"))
}

/// Wait until no socket with this 4-tuple's ports exists any more.
pub fn wait_proc_gone(local_port: u16, remote_port: u16, timeout: Duration) -> Result<()> {
    poll_until("socket to disappear", timeout, || {
        Ok(!proc_tcp_here()?
            .iter()
            .any(|r| r.local_port == local_port && r.remote_port == remote_port))
    })
}

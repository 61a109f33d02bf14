//! Parsers of command-line values shared by the subcommands: one message for every way to miss.

use std::{net::SocketAddr, time::Duration};

/// A whole number from `min` to `max`, with one message for every way to miss (negative, too large
/// for any integer type, not a number).
pub fn count_in(min: u32, max: u32) -> impl Fn(&str) -> Result<u32, String> + Clone + Send + Sync + 'static {
    move |text: &str| {
        text.trim()
            .parse::<u32>()
            .ok()
            .filter(|value| (min..=max).contains(value))
            .ok_or_else(|| format!("{text} is not a whole number from {min} to {max}"))
    }
}

/// `IP:PORT` (`[IPv6]:PORT`); host names are not resolved, so a typo cannot bind elsewhere.
pub fn parse_metrics_addr(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let hint =
        "expected IP:PORT, e.g. 127.0.0.1:9977, 0.0.0.0:9977 or [::1]:9977 (host names are not resolved)";
    let ip = |host: &str| {
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok()
    };
    match text.rsplit_once(':') {
        Some((host, port)) if ip(host) && port.parse::<u16>().is_err() => {
            Err(format!("port {port:?} is not a number from 0 to 65535; {hint}"))
        }
        _ => Err(hint.to_string()),
    }
}

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text).map_err(|err| format!("{err} (try 30s, 2m, 1h)"))?;
    if duration.is_zero() {
        return Err("must be more than 0".into());
    }
    Ok(duration)
}

pub fn parse_ring_kib(text: &str) -> Result<u32, String> {
    match text.trim().parse::<u32>() {
        Ok(kib) if (4..=1024 * 1024).contains(&kib) && kib.is_power_of_two() => Ok(kib),
        _ => Err(format!("{text} is not a power of two between 4 and 1048576")),
    }
}

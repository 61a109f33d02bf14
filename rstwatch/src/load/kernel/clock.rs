//! The kernel's tick rate and ephemeral port range.
//!
//! TCP keeps its timestamps (`lsndtime`, `rcv_tstamp`, `lrcvtime`) in jiffies, so turning the
//! idle threshold into something the programs can compare needs CONFIG_HZ, which the kernel
//! does not export directly.

use std::fs;
use std::io::Read as _;
use std::path::Path;
use std::thread::sleep;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};

/// The CONFIG_HZ choices Kconfig offers on the architectures we run on.
const HZ_CHOICES: [u32; 4] = [100, 250, 300, 1000];

/// CONFIG_HZ of the running kernel: from its config when one is readable, else measured.
pub fn hz() -> Result<u32> {
    match configured_hz() {
        Ok((hz, source)) => {
            log::debug!("CONFIG_HZ={hz} (from {source})");
            return Ok(hz);
        }
        Err(e) => log::debug!("kernel config gives no CONFIG_HZ ({e:#}); calibrating"),
    }
    let hz = calibrate_hz().context(
        "cannot tell the kernel's CONFIG_HZ: no /proc/config.gz or /boot/config-<release>, and \
         measuring it from /proc/timer_list failed (rstwatch must run as root)",
    )?;
    log::info!("CONFIG_HZ not in any kernel config file; measured HZ={hz} from /proc/timer_list");
    Ok(hz)
}

fn configured_hz() -> Result<(u32, String)> {
    let boot = format!("/boot/config-{}", super::release()?);
    configured_hz_in(Path::new("/proc/config.gz"), Path::new(&boot))
}

/// CONFIG_HZ from the gzipped config the kernel exports, else from the one installed with it.
fn configured_hz_in(config_gz: &Path, boot: &Path) -> Result<(u32, String)> {
    let mut errors = Vec::new();
    let mut gz = String::new();
    let gz_name = config_gz.display();
    match fs::File::open(config_gz).and_then(|f| flate2::read::GzDecoder::new(f).read_to_string(&mut gz)) {
        Ok(_) => match parse_config_hz(&gz) {
            Some(hz) => return Ok((hz, gz_name.to_string())),
            None => errors.push(format!("{gz_name} has no CONFIG_HZ")),
        },
        Err(e) => errors.push(format!("{gz_name}: {e}")),
    }
    let boot = boot.display().to_string();
    match fs::read_to_string(&boot) {
        Ok(text) => match parse_config_hz(&text) {
            Some(hz) => return Ok((hz, boot)),
            None => errors.push(format!("{boot} has no CONFIG_HZ")),
        },
        Err(e) => errors.push(format!("{boot}: {e}")),
    }
    Err(anyhow!(errors.join("; ")))
}

/// `CONFIG_HZ=250` in a kernel config text.
pub fn parse_config_hz(config: &str) -> Option<u32> {
    config
        .lines()
        .find_map(|l| l.trim().strip_prefix("CONFIG_HZ="))
        .and_then(|v| v.trim().parse().ok())
        .filter(|&hz| hz > 0)
}

/// Counts jiffies against the monotonic clock over ~200 ms.
fn calibrate_hz() -> Result<u32> {
    let sample = || -> Result<(u64, u64)> {
        let text = fs::read_to_string("/proc/timer_list").context("reading /proc/timer_list")?;
        parse_timer_list(&text).ok_or_else(|| anyhow!("/proc/timer_list has no now/jiffies lines"))
    };
    let (ns0, j0) = sample()?;
    sleep(Duration::from_millis(200));
    let (ns1, j1) = sample()?;
    if ns1 <= ns0 {
        bail!("the clock in /proc/timer_list did not advance");
    }
    let measured = j1.wrapping_sub(j0) as f64 * 1e9 / (ns1 - ns0) as f64;
    let hz = nearest_hz(measured);
    if (measured - hz as f64).abs() > hz as f64 * 0.2 {
        log::warn!("measured {measured:.0} jiffies/s, far from any CONFIG_HZ; assuming {hz}");
    }
    Ok(hz)
}

/// (`now at N nsecs`, first `jiffies: N`) from /proc/timer_list.
pub fn parse_timer_list(text: &str) -> Option<(u64, u64)> {
    let number = |prefix: &str| {
        text.lines().find_map(|l| {
            let rest = l.trim_start().strip_prefix(prefix)?;
            rest.split_whitespace().next()?.parse::<u64>().ok()
        })
    };
    Some((number("now at ")?, number("jiffies:")?))
}

pub fn nearest_hz(measured: f64) -> u32 {
    HZ_CHOICES
        .into_iter()
        .min_by(|a, b| {
            (*a as f64 - measured)
                .abs()
                .total_cmp(&(*b as f64 - measured).abs())
        })
        .expect("non-empty")
}

/// `net.ipv4.ip_local_port_range` (of rstwatch's network namespace).
pub fn ephemeral_port_range() -> Result<(u16, u16)> {
    const PATH: &str = "/proc/sys/net/ipv4/ip_local_port_range";
    let text = fs::read_to_string(PATH).with_context(|| format!("reading {PATH}"))?;
    parse_port_range(&text).with_context(|| format!("parsing {PATH}"))
}

pub fn parse_port_range(text: &str) -> Result<(u16, u16)> {
    let mut ports = text.split_whitespace().map(|p| p.parse::<u16>());
    match (ports.next(), ports.next(), ports.next()) {
        (Some(Ok(low)), Some(Ok(high)), None) if low <= high => Ok((low, high)),
        _ => bail!("expected two ports `low high`, got {:?}", text.trim()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_hz_from_a_config() {
        let config = "# CONFIG_HZ_100 is not set\nCONFIG_HZ_250=y\n# CONFIG_HZ_1000 is not set\n\
                      CONFIG_HZ=250\nCONFIG_SCHED_HRTICK=y\n";
        assert_eq!(parse_config_hz(config), Some(250));
        assert_eq!(parse_config_hz("CONFIG_HZ_1000=y\nCONFIG_HZ=1000"), Some(1000));
        assert_eq!(parse_config_hz("CONFIG_HZ_250=y\n"), None);
        assert_eq!(parse_config_hz("CONFIG_HZ=fast\n"), None);
    }

    #[test]
    fn calibration_rounds_to_a_kconfig_choice() {
        assert_eq!(nearest_hz(248.7), 250);
        assert_eq!(nearest_hz(290.0), 300);
        assert_eq!(nearest_hz(104.0), 100);
        assert_eq!(nearest_hz(871.0), 1000);
        let timer_list = "Timer List Version: v0.10\nHRTIMER_MAX_CLOCK_BASES: 8\n\
                          now at 406306847301 nsecs\n\n  .idle_jiffies   : 4294993697\n  \
                          .last_jiffies   : 4294993812\njiffies: 4294993813\n";
        assert_eq!(parse_timer_list(timer_list), Some((406306847301, 4294993813)));
        assert_eq!(parse_timer_list("now at 5 nsecs\n"), None);
    }

    #[test]
    fn parses_the_port_range() {
        assert_eq!(parse_port_range("32768\t60999\n").unwrap(), (32768, 60999));
        for bad in ["", "32768", "60999 32768", "1 2 3", "1 70000"] {
            assert!(parse_port_range(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn reads_hz_from_config_gz_then_boot_config() {
        let fixtures = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src/load/kernel/fixtures"));
        let gz = fixtures.join("config-hz250.gz");
        let boot = fixtures.join("config-hz300");
        let missing = fixtures.join("no-such-config");
        assert_eq!(configured_hz_in(&gz, &boot).unwrap().0, 250);
        assert_eq!(
            configured_hz_in(&missing, &boot).unwrap(),
            (300, boot.display().to_string())
        );
        // A plain text file where gzip is expected is an error, and the next source is tried.
        assert_eq!(configured_hz_in(&boot, &boot).unwrap().0, 300);
        let err = format!("{:#}", configured_hz_in(&missing, &missing).unwrap_err());
        assert!(err.contains("no-such-config"), "{err}");
    }

    #[test]
    fn live_calibration_agrees_with_the_config() {
        match (configured_hz(), calibrate_hz()) {
            (Ok((configured, _)), Ok(measured)) => assert_eq!(configured, measured),
            (a, b) => crate::skip::skipped(format_args!(
                "no kernel config or no /proc/timer_list to compare: {:?} / {:?}",
                a.err(),
                b.err()
            )),
        }
    }

    #[test]
    fn live_hz_is_a_kconfig_choice() {
        match hz() {
            Ok(hz) => assert!(HZ_CHOICES.contains(&hz), "HZ={hz}"),
            Err(e) => crate::skip::skipped(format_args!("cannot tell this kernel's HZ: {e:#}")),
        }
    }
}

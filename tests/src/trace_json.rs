//! `rstwatch trace --output json` around a piece of a test: the events rstwatch wrote, as JSON.

use std::io::{BufRead, Read};
use std::time::Duration;

use anyhow::{Context, Result, bail};

pub struct TraceJson {
    child: std::process::Child,
}

impl TraceJson {
    /// Start it and wait until its programs are attached (it says so on stderr).
    pub fn start(args: &[&str]) -> Result<TraceJson> {
        let mut command = std::process::Command::new(crate::daemon::binary_path());
        command
            .args(["trace", "--output", "json"])
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = crate::process::dies_with_test(&mut command, None)
            .spawn().context("starting rstwatch trace")?;
        let mut line = String::new();
        std::io::BufReader::new(child.stderr.take().expect("piped")).read_line(&mut line)?;
        if !line.contains("tracing") {
            bail!("trace did not start: {line}");
        }
        Ok(TraceJson { child })
    }

    /// SIGINT after a short grace (events wait up to 20 ms for their partner, and the reader
    /// drains every 25 ms), then every line it printed.
    pub fn stop(mut self) -> Result<Vec<serde_json::Value>> {
        std::thread::sleep(Duration::from_millis(300));
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let mut out = String::new();
        self.child
            .stdout
            .take()
            .expect("piped")
            .read_to_string(&mut out)?;
        self.child.wait()?;
        out.lines()
            .map(|l| serde_json::from_str(l).with_context(|| format!("not JSON: {l}")))
            .collect()
    }
}

impl Drop for TraceJson {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

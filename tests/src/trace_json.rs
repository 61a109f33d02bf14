//! `rstwatch trace` around a piece of a test: [`Trace`] for what it printed, [`TraceJson`] for
//! the events of `--output json`, parsed.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, ChildStderr, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// A `rstwatch trace` child, ready once it says so on stderr; it dies with the test.
pub struct Trace {
    pub child: Child,
    /// Its stderr after the start line.
    pub stderr: BufReader<ChildStderr>,
}

impl Trace {
    /// Start it and wait until its programs are attached.
    pub fn start(args: &[&str]) -> Result<Trace> {
        let mut child =
            crate::process::dies_with_test(&mut Command::new(crate::process::binary_path()), None)
                .arg("trace")
                .args(args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .context("starting rstwatch trace")?;
        let mut stderr = BufReader::new(child.stderr.take().expect("piped"));
        let mut line = String::new();
        stderr.read_line(&mut line)?;
        if !line.contains("tracing TCP resets") {
            let _ = child.kill();
            let _ = child.wait();
            bail!("rstwatch trace did not start: {line}");
        }
        Ok(Trace { child, stderr })
    }

    /// SIGINT after a short grace (events wait up to 20 ms for their partner, and the reader
    /// drains every 25 ms), then everything it printed: (stdout, stderr after the start line,
    /// exit code).
    pub fn stop(mut self) -> Result<(String, String, i32)> {
        std::thread::sleep(Duration::from_millis(300));
        // SAFETY: our own child, not yet reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let mut stdout = String::new();
        self.child
            .stdout
            .take()
            .expect("piped")
            .read_to_string(&mut stdout)?;
        let mut stderr = String::new();
        self.stderr.read_to_string(&mut stderr)?;
        let status = self.child.wait()?;
        Ok((stdout, stderr, status.code().unwrap_or(-1)))
    }
}

impl Drop for Trace {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `rstwatch trace --output json`: the events rstwatch wrote, as JSON.
pub struct TraceJson(Trace);

impl TraceJson {
    pub fn start(args: &[&str]) -> Result<TraceJson> {
        Ok(TraceJson(Trace::start(&[&["--output", "json"], args].concat())?))
    }

    /// Stop it ([`Trace::stop`]), then every line it printed.
    pub fn stop(self) -> Result<Vec<serde_json::Value>> {
        let (out, _, _) = self.0.stop()?;
        out.lines()
            .map(|l| serde_json::from_str(l).with_context(|| format!("not JSON: {l}")))
            .collect()
    }
}

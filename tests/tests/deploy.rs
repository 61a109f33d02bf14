//! The production packaging under `deploy/`, proven against real programs:
//!
//! - `prometheus_scrapes_rstwatch_as_deployed`: rstwatch runs the way `deploy/kubernetes/daemonset.yaml`
//!   runs it (uid/gid 65534, exactly the manifest's capabilities and nothing else, `--metrics-addr
//!   0.0.0.0:9977` in a network namespace of its own as a pod without hostNetwork would), next to a
//!   real Prometheus (Debian's package) that scrapes it every second and loads
//!   `deploy/prometheus/alerts.yml`. Real resets are made in *another* network namespace (refused
//!   connect, SO_LINGER=0 close, stale keep-alive connection, idle half-open connection); then,
//!   through Prometheus's HTTP API only: `rstwatch_resets_total` rose for each expected cause, with
//!   the exact counts on the scenarios' ports; every Grafana panel query and template variable of
//!   `deploy/grafana/rstwatch-dashboard.json` parses and returns data; every alert rule was evaluated
//!   by Prometheus without error and every alert expression parses. Both processes are stopped by
//!   PID, rstwatch with SIGTERM (exit 0, as on pod termination).
//! - `capability_set_is_minimal`: without any one of the manifest's capabilities the daemon fails
//!   to start, with the error recorded in deploy/README.md; as root, CAP_BPF + CAP_PERFMON suffice.
//! - `alert_rules_and_configs_pass_promtool`: `promtool check rules`, `promtool test rules`
//!   (deploy/prometheus/alerts_test.yml), `promtool check config`.
//! - `kubernetes_manifests_validate`: deploy/kubernetes/check_manifests.py (the PyPI package
//!   `kubernetes-validate`, bundled schemas, strict mode, Kubernetes 1.25 and newest) in a virtualenv
//!   under target/deploy-tools.
//! - `grafana_dashboard_is_well_formed`: ids, layout, data source variable, targets.
//!
//! Needs root. Installs Debian's `prometheus` package (apt-get, only if `prometheus`/`promtool` are
//! missing) and the validator (pip, into target/deploy-tools/venv, only if missing).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail, ensure};
use rstwatch_tests::NetNs;
use rstwatch_tests::scenarios;

// ---------------------------------------------------------------------------------------------
// paths and tools

fn workspace() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(&manifest).to_path_buf()
}

fn deploy() -> PathBuf {
    workspace().join("deploy")
}

fn rstwatch_bin() -> PathBuf {
    let bin = rstwatch_tests::daemon::binary_path();
    assert!(
        bin.exists(),
        "{} does not exist: `cargo build --release -p rstwatch` or set RSTWATCH_BIN",
        bin.display()
    );
    bin
}

fn on_path(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Run a command to completion; Ok(stdout) if it exits 0, else an error with both outputs.
fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("starting {cmd:?}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(stdout)
}

/// Debian's `prometheus` package (prometheus + promtool), installed once if missing. On Debian the
/// package's maintainer script asks invoke-rc.d to start the system service; on these machines
/// there is no systemd and policy-rc.d denies it, and the tests never use that service anyway.
fn ensure_prometheus() -> Result<()> {
    static DONE: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        if on_path("prometheus") && on_path("promtool") {
            return Ok(());
        }
        eprintln!("deploy tests: installing Debian's prometheus package (apt-get)");
        let apt = |args: &[&str]| {
            run(Command::new("apt-get")
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive"))
        };
        apt(&["update", "-qq"])
            .and_then(|_| {
                apt(&[
                    "install",
                    "-y",
                    "-qq",
                    "--no-install-recommends",
                    "prometheus",
                ])
            })
            .map(|_| ())
            .map_err(|e| format!("{e:#}"))
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

/// A virtualenv with `kubernetes-validate` under target/deploy-tools; created once if missing.
fn validator_python() -> Result<PathBuf> {
    static VENV: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    VENV.get_or_init(|| {
        let venv = workspace().join("target").join("deploy-tools").join("venv");
        let python = venv.join("bin").join("python");
        let ready = || {
            python.exists()
                && Command::new(&python)
                    .args(["-c", "import kubernetes_validate, yaml"])
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
        };
        if ready() {
            return Ok(python);
        }
        eprintln!(
            "deploy tests: installing kubernetes-validate (PyPI) into {}",
            venv.display()
        );
        let make = || -> Result<()> {
            // python3 from PATH (pyenv's on these machines), else Debian's, with its venv module.
            let made = run(Command::new("python3")
                .arg("-m")
                .arg("venv")
                .arg("--clear")
                .arg(&venv))
            .or_else(|_| {
                run(Command::new("/usr/bin/python3")
                    .arg("-m")
                    .arg("venv")
                    .arg("--clear")
                    .arg(&venv))
            });
            if made.is_err() {
                eprintln!("deploy tests: installing Debian's python3-venv (apt-get)");
                run(Command::new("apt-get")
                    .args(["update", "-qq"])
                    .env("DEBIAN_FRONTEND", "noninteractive"))?;
                run(Command::new("apt-get")
                    .args([
                        "install",
                        "-y",
                        "-qq",
                        "--no-install-recommends",
                        "python3-venv",
                    ])
                    .env("DEBIAN_FRONTEND", "noninteractive"))?;
                run(Command::new("/usr/bin/python3")
                    .arg("-m")
                    .arg("venv")
                    .arg("--clear")
                    .arg(&venv))?;
            }
            run(Command::new(venv.join("bin").join("pip")).args([
                "install",
                "-q",
                "--disable-pip-version-check",
                "kubernetes-validate==1.37.0",
            ]))?;
            ensure!(
                ready(),
                "kubernetes_validate does not import after pip install"
            );
            Ok(())
        };
        make().map(|_| python.clone()).map_err(|e| format!("{e:#}"))
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

/// deploy/kubernetes/check_manifests.py's summary (it validates and cross-checks the manifests).
fn manifests() -> Result<Json> {
    static SUMMARY: OnceLock<std::result::Result<Json, String>> = OnceLock::new();
    SUMMARY
        .get_or_init(|| {
            let get = || -> Result<Json> {
                let python = validator_python()?;
                let out =
                    run(Command::new(python).arg(deploy().join("kubernetes/check_manifests.py")))?;
                parse_json(out.trim()).context("check_manifests.py output")
            };
            get().map_err(|e| format!("{e:#}"))
        })
        .clone()
        .map_err(|e| anyhow!(e))
}

/// The daemon needs tracefs to be mounted, like the DaemonSet does on its node (a non-root container
/// cannot mount it). Mount it as the daemon itself would when run as root.
fn ensure_tracefs() -> Result<()> {
    static LOCK: Mutex<()> = Mutex::new(());
    let _g = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    if Path::new("/sys/kernel/tracing/events").is_dir()
        || Path::new("/sys/kernel/debug/tracing/events").is_dir()
    {
        return Ok(());
    }
    run(Command::new("mount").args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"])).map(|_| ())
}

fn temp_dir(what: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("rstwatch-deploy-{}-{what}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    Ok(dir)
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

fn tail(path: &Path, n: usize) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

// ---------------------------------------------------------------------------------------------
// processes we start, stopped by PID

struct Proc {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    /// Spawn `cmd` with stdout+stderr to `log`, optionally inside a network namespace (setns in the
    /// child, before exec: nothing else about the child changes).
    fn spawn(name: &str, cmd: &mut Command, netns: Option<&NetNs>, log: PathBuf) -> Result<Proc> {
        let out = File::create(&log).with_context(|| format!("create {}", log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let ns_file = match netns {
            Some(ns) => Some(File::open(ns.path()).with_context(|| format!("open {}", ns.path()))?),
            None => None,
        };
        let ns_fd = ns_file.as_ref().map(|f| f.as_raw_fd());
        // SAFETY: only async-signal-safe calls (prctl, setns) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some(fd) = ns_fd
                    && libc::setns(fd, libc::CLONE_NEWNET) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("spawn {name}: {cmd:?}"))?;
        drop(ns_file);
        Ok(Proc {
            name: name.to_string(),
            child: Some(child),
            log,
        })
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Some(status) once it has exited.
    fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// SIGTERM, then SIGKILL after `grace`; returns how it ended.
    fn stop(&mut self, grace: Duration) -> Result<ExitStatus> {
        let mut child = self.child.take().context("already stopped")?;
        if let Some(st) = child.try_wait()? {
            return Ok(st);
        }
        // SAFETY: signalling our own child by its PID (not yet reaped, so the PID is still ours).
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(st) = child.try_wait()? {
                return Ok(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.kill()?;
        let st = child.wait()?;
        bail!(
            "{} (pid {}) ignored SIGTERM for {grace:?}; killed ({st})",
            self.name,
            child.id()
        )
    }

    fn log_tail(&self) -> String {
        format!(
            "{} log {}:\n{}",
            self.name,
            self.log.display(),
            tail(&self.log, 30)
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `setpriv` command that runs `bin` as uid/gid with exactly `caps` (Kubernetes names: "BPF",
/// "PERFMON", ...) in the permitted, effective and bounding sets and nothing else. (The image gets
/// the same result from file capabilities; ambient capabilities are how to get it without them.)
fn with_caps(bin: &Path, uid: u32, gid: u32, caps: &[&str]) -> Command {
    let set: String = std::iter::once("-all".to_string())
        .chain(caps.iter().map(|c| format!("+{}", c.to_ascii_lowercase())))
        .collect::<Vec<_>>()
        .join(",");
    let mut cmd = Command::new("setpriv");
    if uid != 0 {
        cmd.args([
            "--reuid",
            &uid.to_string(),
            "--regid",
            &gid.to_string(),
            "--clear-groups",
        ]);
    }
    cmd.args([
        "--inh-caps",
        &set,
        "--ambient-caps",
        &set,
        "--bounding-set",
        &set,
        "--",
    ])
    .arg(bin);
    cmd
}

// ---------------------------------------------------------------------------------------------
// HTTP (HTTP/1.0: no chunking, the server closes) and URL encoding

fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .with_context(|| format!("connect {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: application/json, text/plain\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).context("read response")?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of headers")?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("bad status line in {head:?}"))?;
    Ok((
        status,
        String::from_utf8_lossy(&raw[split + 4..]).into_owned(),
    ))
}

fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// A small JSON reader (Prometheus API answers, the dashboard, check_manifests.py's summary)

#[derive(Clone, Debug, PartialEq)]
enum Json {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

static NULL: Json = Json::Null;

impl Json {
    fn get(&self, key: &str) -> &Json {
        match self {
            Json::Obj(m) => m
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v)
                .unwrap_or(&NULL),
            _ => &NULL,
        }
    }
    fn str(&self) -> Option<&str> {
        match self {
            Json::Str(s) => Some(s),
            _ => None,
        }
    }
    fn arr(&self) -> &[Json] {
        match self {
            Json::Arr(a) => a,
            _ => &[],
        }
    }
    fn num(&self) -> Option<f64> {
        match self {
            Json::Num(n) => Some(*n),
            _ => None,
        }
    }
    fn bool(&self) -> Option<bool> {
        match self {
            Json::Bool(b) => Some(*b),
            _ => None,
        }
    }
}

fn parse_json(text: &str) -> Result<Json> {
    let mut p = JsonParser {
        b: text.as_bytes(),
        i: 0,
    };
    let v = p.value()?;
    p.ws();
    ensure!(p.i == p.b.len(), "trailing characters at byte {}", p.i);
    Ok(v)
}

struct JsonParser<'a> {
    b: &'a [u8],
    i: usize,
}

impl JsonParser<'_> {
    fn ws(&mut self) {
        while self.i < self.b.len() && matches!(self.b[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }
    fn expect(&mut self, c: u8) -> Result<()> {
        self.ws();
        ensure!(
            self.peek() == Some(c),
            "expected {:?} at byte {}",
            c as char,
            self.i
        );
        self.i += 1;
        Ok(())
    }
    fn value(&mut self) -> Result<Json> {
        self.ws();
        match self.peek().context("unexpected end of JSON")? {
            b'{' => {
                self.i += 1;
                let mut m = Vec::new();
                self.ws();
                if self.peek() == Some(b'}') {
                    self.i += 1;
                    return Ok(Json::Obj(m));
                }
                loop {
                    self.ws();
                    let k = self.string()?;
                    self.expect(b':')?;
                    m.push((k, self.value()?));
                    self.ws();
                    match self.peek() {
                        Some(b',') => self.i += 1,
                        Some(b'}') => {
                            self.i += 1;
                            return Ok(Json::Obj(m));
                        }
                        _ => bail!("expected , or }} at byte {}", self.i),
                    }
                }
            }
            b'[' => {
                self.i += 1;
                let mut a = Vec::new();
                self.ws();
                if self.peek() == Some(b']') {
                    self.i += 1;
                    return Ok(Json::Arr(a));
                }
                loop {
                    a.push(self.value()?);
                    self.ws();
                    match self.peek() {
                        Some(b',') => self.i += 1,
                        Some(b']') => {
                            self.i += 1;
                            return Ok(Json::Arr(a));
                        }
                        _ => bail!("expected , or ] at byte {}", self.i),
                    }
                }
            }
            b'"' => Ok(Json::Str(self.string()?)),
            b't' if self.b[self.i..].starts_with(b"true") => {
                self.i += 4;
                Ok(Json::Bool(true))
            }
            b'f' if self.b[self.i..].starts_with(b"false") => {
                self.i += 5;
                Ok(Json::Bool(false))
            }
            b'n' if self.b[self.i..].starts_with(b"null") => {
                self.i += 4;
                Ok(Json::Null)
            }
            _ => {
                let start = self.i;
                while self.i < self.b.len()
                    && matches!(
                        self.b[self.i],
                        b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'
                    )
                {
                    self.i += 1;
                }
                let s = std::str::from_utf8(&self.b[start..self.i])?;
                Ok(Json::Num(s.parse().with_context(|| {
                    format!("bad JSON value at byte {start}")
                })?))
            }
        }
    }
    fn hex4(&mut self) -> Result<u32> {
        let s = std::str::from_utf8(self.b.get(self.i..self.i + 4).context("short \\u escape")?)?;
        self.i += 4;
        Ok(u32::from_str_radix(s, 16)?)
    }
    fn string(&mut self) -> Result<String> {
        self.expect(b'"')?;
        let mut out = Vec::new();
        loop {
            let c = self.peek().context("unterminated string")?;
            self.i += 1;
            match c {
                b'"' => return Ok(String::from_utf8(out)?),
                b'\\' => {
                    let e = self.peek().context("dangling escape")?;
                    self.i += 1;
                    let ch = match e {
                        b'n' => '\n',
                        b't' => '\t',
                        b'r' => '\r',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'u' => {
                            let mut cp = self.hex4()?;
                            if (0xD800..0xDC00).contains(&cp)
                                && self.b[self.i..].starts_with(b"\\u")
                            {
                                self.i += 2;
                                let lo = self.hex4()?;
                                cp = 0x10000
                                    + ((cp - 0xD800) << 10)
                                    + (lo.wrapping_sub(0xDC00) & 0x3FF);
                            }
                            char::from_u32(cp).unwrap_or('\u{FFFD}')
                        }
                        other => other as char,
                    };
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                }
                c => out.push(c),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Prometheus HTTP API, reached from inside its network namespace

struct Prom<'a> {
    ns: &'a NetNs,
    addr: SocketAddr,
}

impl Prom<'_> {
    fn get(&self, path: &str) -> Result<(u16, String)> {
        let addr = self.addr;
        let path = path.to_string();
        self.ns.run(move || http_get(addr, &path))?
    }

    /// `data` of a successful API answer; the API's error text otherwise.
    fn api(&self, path: &str) -> Result<Json> {
        let (status, body) = self.get(path)?;
        let j = parse_json(&body)
            .with_context(|| format!("GET {path}: HTTP {status}, not JSON: {body:.300}"))?;
        if j.get("status").str() != Some("success") {
            bail!(
                "HTTP {status}: {} {}",
                j.get("errorType").str().unwrap_or("?"),
                j.get("error").str().unwrap_or("?")
            );
        }
        Ok(j.get("data").clone())
    }

    fn instant(&self, q: &str, at: f64) -> Result<Json> {
        self.api(&format!(
            "/api/v1/query?query={}&time={at:.3}",
            urlencode(q)
        ))
    }

    fn range(&self, q: &str, start: f64, end: f64, step: f64) -> Result<Json> {
        self.api(&format!(
            "/api/v1/query_range?query={}&start={start:.3}&end={end:.3}&step={step}",
            urlencode(q)
        ))
    }
}

/// (labels, value) rows of an instant vector; (labels, last value) of a matrix.
fn rows(data: &Json) -> Vec<(BTreeMap<String, String>, f64)> {
    let labels = |m: &Json| -> BTreeMap<String, String> {
        match m {
            Json::Obj(kv) => kv
                .iter()
                .map(|(k, v)| (k.clone(), v.str().unwrap_or("").to_string()))
                .collect(),
            _ => BTreeMap::new(),
        }
    };
    let val = |p: &Json| {
        p.arr()
            .get(1)
            .and_then(|v| v.str())
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    match data.get("resultType").str() {
        Some("vector") => data
            .get("result")
            .arr()
            .iter()
            .map(|r| (labels(r.get("metric")), val(r.get("value"))))
            .collect(),
        Some("matrix") => data
            .get("result")
            .arr()
            .iter()
            .map(|r| {
                (
                    labels(r.get("metric")),
                    r.get("values").arr().last().map(val).unwrap_or(f64::NAN),
                )
            })
            .collect(),
        Some("scalar") => vec![(BTreeMap::new(), val(data.get("result")))],
        _ => Vec::new(),
    }
}

fn result_len(data: &Json) -> usize {
    match data.get("resultType").str() {
        Some("scalar") | Some("string") => 1,
        _ => data.get("result").arr().len(),
    }
}

// ---------------------------------------------------------------------------------------------
// Grafana dashboard: queries, with the template variables as Grafana would expand them

struct PanelQuery {
    panel: String,
    kind: String,
    ref_id: String,
    expr: String,
    instant: bool,
    /// The panel says it is empty outside Kubernetes ("Kubernetes mode only"): it must parse, but
    /// this test (no API server) cannot give it data.
    kubernetes_only: bool,
}

fn dashboard() -> Result<Json> {
    let path = deploy().join("grafana/rstwatch-dashboard.json");
    parse_json(&std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?)
        .with_context(|| format!("parse {}", path.display()))
}

/// Every panel, rows' nested panels included.
fn panels(d: &Json) -> Vec<&Json> {
    let mut out = Vec::new();
    for p in d.get("panels").arr() {
        out.push(p);
        out.extend(p.get("panels").arr().iter());
    }
    out
}

fn panel_queries(d: &Json) -> Vec<PanelQuery> {
    let mut out = Vec::new();
    for p in panels(d) {
        for t in p.get("targets").arr() {
            out.push(PanelQuery {
                panel: p.get("title").str().unwrap_or("?").to_string(),
                kind: p.get("type").str().unwrap_or("?").to_string(),
                ref_id: t.get("refId").str().unwrap_or("?").to_string(),
                expr: t.get("expr").str().unwrap_or("").to_string(),
                instant: t.get("instant").bool() == Some(true),
                kubernetes_only: p
                    .get("title")
                    .str()
                    .is_some_and(|t| t.contains("Kubernetes mode only")),
            });
        }
    }
    out
}

/// Expand Grafana's variables the way a dashboard showing "All" does: every query variable's
/// allValue, `$__rate_interval` (at least 4 scrape intervals), `$__range` (the whole test).
fn expand(expr: &str, vars: &BTreeMap<String, String>, rate_interval: &str, range: &str) -> String {
    let mut s = expr
        .replace("$__rate_interval", rate_interval)
        .replace("${__rate_interval}", rate_interval)
        .replace("$__interval", rate_interval)
        .replace("$__range", range)
        .replace("${__range}", range);
    for (name, value) in vars {
        s = s
            .replace(&format!("${{{name}}}"), value)
            .replace(&format!("${name}"), value);
    }
    s
}

fn template_vars(d: &Json) -> BTreeMap<String, String> {
    d.get("templating")
        .get("list")
        .arr()
        .iter()
        .filter(|v| v.get("type").str() == Some("query"))
        .filter_map(|v| {
            Some((
                v.get("name").str()?.to_string(),
                v.get("allValue").str().unwrap_or(".*").to_string(),
            ))
        })
        .collect()
}

/// `label_values(selector, label)` of the query variables: (variable, selector, label).
fn label_values_queries(d: &Json) -> Result<Vec<(String, String, String)>> {
    let mut out = Vec::new();
    for v in d.get("templating").get("list").arr() {
        if v.get("type").str() != Some("query") {
            continue;
        }
        let name = v.get("name").str().unwrap_or("?").to_string();
        let q = v
            .get("query")
            .get("query")
            .str()
            .or(v.get("definition").str())
            .unwrap_or("");
        let inner = q
            .trim()
            .strip_prefix("label_values(")
            .and_then(|r| r.strip_suffix(')'))
            .with_context(|| {
                format!("variable {name}: {q:?} is not label_values(selector, label)")
            })?;
        let (sel, label) = inner
            .rsplit_once(',')
            .with_context(|| format!("variable {name}: {q:?}"))?;
        out.push((name, sel.trim().to_string(), label.trim().to_string()));
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// tests

#[test]
fn grafana_dashboard_is_well_formed() {
    let d = dashboard().unwrap();
    assert!(
        d.get("uid").str().is_some_and(|u| !u.is_empty()),
        "dashboard uid"
    );
    assert!(
        d.get("title").str().is_some_and(|t| !t.is_empty()),
        "dashboard title"
    );
    let vars: Vec<&str> = d
        .get("templating")
        .get("list")
        .arr()
        .iter()
        .filter_map(|v| v.get("name").str())
        .collect();
    assert!(
        vars.contains(&"datasource"),
        "a datasource variable, so the dashboard imports anywhere"
    );
    let mut ids = BTreeSet::new();
    let mut boxes: Vec<(String, i64, i64, i64, i64)> = Vec::new();
    for p in panels(&d) {
        let title = p.get("title").str().unwrap_or("?").to_string();
        let id = p.get("id").num().unwrap_or(-1.0) as i64;
        assert!(ids.insert(id), "panel id {id} ({title}) is not unique");
        let g = p.get("gridPos");
        let (x, y, w, h) = (
            g.get("x").num().unwrap_or(-1.0) as i64,
            g.get("y").num().unwrap_or(-1.0) as i64,
            g.get("w").num().unwrap_or(0.0) as i64,
            g.get("h").num().unwrap_or(0.0) as i64,
        );
        assert!(
            x >= 0 && y >= 0 && w > 0 && h > 0 && x + w <= 24,
            "{title}: gridPos {x},{y} {w}x{h}"
        );
        for (other, ox, oy, ow, oh) in &boxes {
            let overlap = x < ox + ow && *ox < x + w && y < oy + oh && *oy < y + h;
            assert!(!overlap, "panels {title:?} and {other:?} overlap");
        }
        boxes.push((title.clone(), x, y, w, h));
        if p.get("type").str() == Some("row") {
            continue;
        }
        assert_eq!(
            p.get("datasource").get("uid").str(),
            Some("${datasource}"),
            "{title}: data source"
        );
        let targets = p.get("targets").arr();
        assert!(!targets.is_empty(), "{title}: no query");
        let mut refs = BTreeSet::new();
        for t in targets {
            assert!(
                refs.insert(t.get("refId").str().unwrap_or("")),
                "{title}: duplicate refId"
            );
            assert!(
                t.get("expr").str().is_some_and(|e| e.contains("rstwatch_")),
                "{title}: expr"
            );
            assert_eq!(
                t.get("datasource").get("uid").str(),
                Some("${datasource}"),
                "{title}: target data source"
            );
        }
    }
    // The panels are all there.
    let titles: Vec<String> = panels(&d)
        .iter()
        .filter_map(|p| p.get("title").str())
        .map(str::to_lowercase)
        .collect();
    for want in [
        "sent by cause",
        "received by cause",
        "sent vs received",
        "top service ports",
        "top processes",
        "top pods",
        "stale-connection",
        "idle resets",
        "idle time before",
        "probes attached",
        "lost events",
    ] {
        assert!(
            titles.iter().any(|t| t.contains(want)),
            "no panel about {want:?}: {titles:?}"
        );
    }
}

#[test]
fn kubernetes_manifests_validate() {
    assert!(
        rstwatch_tests::is_root(),
        "these tests need root (they may install packages)"
    );
    let m = manifests().unwrap_or_else(|e| panic!("deploy/kubernetes/check_manifests.py: {e:#}"));
    let validated: Vec<&str> = m
        .get("validated")
        .arr()
        .iter()
        .filter_map(|v| v.str())
        .collect();
    eprintln!("validated against the Kubernetes schemas: {validated:?}");
    assert_eq!(validated.len(), 12, "6 resources x 2 Kubernetes versions");
    let caps: Vec<&str> = m
        .get("capabilities")
        .arr()
        .iter()
        .filter_map(|v| v.str())
        .collect();
    assert_eq!(caps, ["BPF", "DAC_READ_SEARCH", "PERFMON"]);
}

#[test]
fn alert_rules_and_configs_pass_promtool() {
    assert!(
        rstwatch_tests::is_root(),
        "these tests need root (they may install packages)"
    );
    ensure_prometheus().unwrap();
    let dir = deploy().join("prometheus");
    let out = run(Command::new("promtool")
        .args(["check", "rules", "alerts.yml"])
        .current_dir(&dir))
    .unwrap();
    eprintln!("{out}");
    let out = run(Command::new("promtool")
        .args(["test", "rules", "alerts_test.yml"])
        .current_dir(&dir))
    .unwrap();
    assert!(out.contains("SUCCESS"), "{out}");
    eprintln!("{out}");
    // The Kubernetes scrape configuration. Debian's Prometheus is built without Kubernetes service
    // discovery ("field kubernetes_sd_configs not found"): there, check the rest of the file with the
    // discovery block replaced by a static target.
    let k8s = dir.join("scrape-kubernetes.yml");
    match run(Command::new("promtool")
        .arg("check")
        .arg("config")
        .arg(&k8s))
    {
        Ok(out) => eprintln!("{out}"),
        Err(e) if format!("{e:#}").contains("field kubernetes_sd_configs not found") => {
            let text = std::fs::read_to_string(&k8s).unwrap();
            let mut replaced = String::new();
            let mut skipping = false;
            for line in text.lines() {
                if line.trim_start().starts_with("kubernetes_sd_configs:") {
                    skipping = true;
                    replaced.push_str("    static_configs:\n      - targets: ['127.0.0.1:9977']\n");
                    continue;
                }
                if skipping && (line.starts_with("      ") || line.trim().is_empty()) {
                    continue;
                }
                skipping = false;
                replaced.push_str(line);
                replaced.push('\n');
            }
            let tmp = temp_dir("promtool").unwrap();
            std::fs::write(tmp.join("scrape-kubernetes.yml"), replaced).unwrap();
            std::fs::copy(dir.join("alerts.yml"), tmp.join("alerts.yml")).unwrap();
            let out = run(Command::new("promtool")
                .args(["check", "config", "scrape-kubernetes.yml"])
                .current_dir(&tmp))
            .unwrap();
            eprintln!(
                "this promtool has no Kubernetes discovery; checked scrape-kubernetes.yml with a static target:\n{out}"
            );
            let _ = std::fs::remove_dir_all(&tmp);
        }
        Err(e) => panic!("{e:#}"),
    }
}

/// Without any one of the manifest's capabilities the daemon must fail, with the error
/// deploy/README.md records; as root (uid 0) CAP_BPF + CAP_PERFMON suffice.
#[test]
fn capability_set_is_minimal() {
    assert!(rstwatch_tests::is_root(), "these tests need root");
    let m = manifests().unwrap();
    let caps: Vec<String> = m
        .get("capabilities")
        .arr()
        .iter()
        .filter_map(|v| v.str().map(String::from))
        .collect();
    let uid = m.get("run_as_user").num().unwrap() as u32;
    let gid = m.get("run_as_group").num().unwrap() as u32;
    ensure_tracefs().unwrap();
    let bin = rstwatch_bin();
    let dir = temp_dir("caps").unwrap();
    // What fails first without each capability, on kernel 6.18 (deploy/README.md).
    let expect = |cap: &str| match cap {
        "BPF" => "failed to create map",
        "PERFMON" => "BPF_PROG_LOAD",
        "DAC_READ_SEARCH" => "tracefs",
        other => panic!("no recorded failure for {other}"),
    };
    let mut failures = Vec::new();
    let try_run = |label: &str, uid: u32, set: Vec<&str>| -> Result<Option<String>> {
        let port = free_port()?;
        let mut cmd = with_caps(&bin, uid, gid, &set);
        cmd.args(["run", "--metrics-addr", &format!("127.0.0.1:{port}")]);
        let log = dir.join(format!("{label}.log"));
        let mut p = Proc::spawn(label, &mut cmd, None, log)?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(st) = p.exited() {
                let text = std::fs::read_to_string(&p.log).unwrap_or_default();
                let err = text
                    .lines()
                    .find(|l| l.starts_with("rstwatch: error"))
                    .unwrap_or("")
                    .to_string();
                return Ok(Some(format!("{st}: {err}")));
            }
            if let Ok((200, body)) = http_get(addr, "/metrics")
                && body.contains("rstwatch_probe_attached{probe=\"tcp_send_reset\"} 1")
            {
                let st = p.stop(Duration::from_secs(5))?;
                ensure!(st.success(), "{label}: SIGTERM → {st}");
                return Ok(None);
            }
            ensure!(
                Instant::now() < deadline,
                "{label}: neither ready nor exited after 15 s\n{}",
                p.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    for drop in &caps {
        let set: Vec<&str> = caps
            .iter()
            .map(String::as_str)
            .filter(|c| c != drop)
            .collect();
        let label = format!("uid{uid}-without-{drop}");
        match try_run(&label, uid, set) {
            Ok(Some(err)) => {
                eprintln!("{label}: {err}");
                if !(err.contains(expect(drop)) && err.contains("Operation not permitted")) {
                    failures.push(format!(
                        "{label}: failed, but not as recorded ({:?}): {err}",
                        expect(drop)
                    ));
                }
            }
            Ok(None) => failures.push(format!(
                "{label}: started without {drop}: the set is not minimal"
            )),
            Err(e) => failures.push(format!("{label}: {e:#}")),
        }
    }
    match try_run("uid0-bpf-perfmon", 0, vec!["BPF", "PERFMON"]) {
        Ok(None) => eprintln!("uid0 with BPF+PERFMON: ready"),
        Ok(Some(err)) => failures.push(format!("root with BPF+PERFMON failed: {err}")),
        Err(e) => failures.push(format!("root with BPF+PERFMON: {e:#}")),
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn prometheus_scrapes_rstwatch_as_deployed() {
    assert!(rstwatch_tests::is_root(), "these tests need root");
    let t0 = Instant::now();
    if let Err(e) = scrape_test() {
        let dir =
            std::env::temp_dir().join(format!("rstwatch-deploy-{}-prometheus", std::process::id()));
        panic!(
            "{e:#}\n(logs, configuration and Prometheus data kept in {})",
            dir.display()
        );
    }
    eprintln!(
        "prometheus_scrapes_rstwatch_as_deployed: {:.1} s",
        t0.elapsed().as_secs_f64()
    );
}

/// Poll `f` until it says true, at most `timeout`.
fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    loop {
        match f() {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last = format!("{e:#}"),
        }
        ensure!(
            Instant::now() < deadline,
            "{what}: not after {timeout:?} {last}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn scrape_test() -> Result<()> {
    let started = now();
    ensure_prometheus()?;
    let m = manifests()?;
    ensure_tracefs()?;
    let caps: Vec<String> = m
        .get("capabilities")
        .arr()
        .iter()
        .filter_map(|v| v.str().map(String::from))
        .collect();
    let caps: Vec<&str> = caps.iter().map(String::as_str).collect();
    let uid = m.get("run_as_user").num().context("run_as_user")? as u32;
    let gid = m.get("run_as_group").num().context("run_as_group")? as u32;
    let port = m.get("metrics_port").num().context("metrics_port")? as u16;
    let mut args: Vec<String> = m
        .get("args")
        .arr()
        .iter()
        .filter_map(|v| v.str().map(String::from))
        .collect();
    // The DaemonSet's arguments, but a 1 s idle threshold so that a 2 s idle connection is idle_reset.
    if let Some(i) = args.iter().position(|a| a == "--idle-threshold") {
        args[i + 1] = "1s".into();
    }
    let dir = temp_dir("prometheus")?;

    // The "pod": a network namespace of its own, like a pod without hostNetwork.
    let pod = NetNs::new()?;
    let mut daemon_cmd = with_caps(&rstwatch_bin(), uid, gid, &caps);
    daemon_cmd.args(&args).env("RUST_LOG", "info");
    let mut daemon = Proc::spawn(
        "rstwatch",
        &mut daemon_cmd,
        Some(&pod),
        dir.join("rstwatch.log"),
    )?;
    let metrics = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        ensure!(
            daemon.exited().is_none(),
            "rstwatch exited during start-up\n{}",
            daemon.log_tail()
        );
        let ok = pod.run(move || -> bool {
            matches!(http_get(metrics, "/healthz"), Ok((200, b)) if b.trim() == "ok")
                && matches!(http_get(metrics, "/metrics"), Ok((200, b)) if b.contains("rstwatch_probe_attached{probe=\"tcp_send_reset\"} 1"))
        })?;
        if ok {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "rstwatch not ready in 20 s\n{}",
            daemon.log_tail()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "rstwatch (pid {}) ready as uid {uid} with {caps:?}, {}",
        daemon.pid(),
        args.join(" ")
    );

    // Prometheus in the same namespace, scraping every second, with the alert rules.
    let alerts = deploy().join("prometheus/alerts.yml");
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: rstwatch\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n",
            alerts.display()
        ),
    )?;
    run(Command::new("promtool")
        .arg("check")
        .arg("config")
        .arg(&config))?;
    let prom_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 9090));
    let mut prom_cmd = Command::new("prometheus");
    prom_cmd
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={prom_addr}"))
        .arg("--storage.tsdb.retention.time=1h");
    let mut prom = Proc::spawn(
        "prometheus",
        &mut prom_cmd,
        Some(&pod),
        dir.join("prometheus.log"),
    )?;
    let p = Prom {
        ns: &pod,
        addr: prom_addr,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        ensure!(
            prom.exited().is_none(),
            "prometheus exited during start-up\n{}",
            prom.log_tail()
        );
        if matches!(p.get("/-/ready"), Ok((200, _))) {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "prometheus not ready in 30 s\n{}",
            prom.log_tail()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "prometheus (pid {}) ready on {prom_addr} in the pod's namespace",
        prom.pid()
    );

    // Wait until Prometheus has scraped rstwatch (target up, baseline series present).
    wait_until(
        "rstwatch target up with baseline series",
        Duration::from_secs(20),
        || {
            let up = rows(&p.instant("up{job=\"rstwatch\"}", now())?);
            let base = rows(&p.instant("count(rstwatch_resets_total)", now())?);
            Ok(up.len() == 1 && up[0].1 == 1.0 && base.first().is_some_and(|r| r.1 > 0.0))
        },
    )?;
    std::thread::sleep(Duration::from_millis(1500));
    let before_t = now();
    let by_cause = |at: f64| -> Result<BTreeMap<(String, String), f64>> {
        Ok(
            rows(&p.instant("sum by (direction, cause) (rstwatch_resets_total)", at)?)
                .into_iter()
                .map(|(l, v)| ((l["direction"].clone(), l["cause"].clone()), v))
                .collect(),
        )
    };
    let before = by_cause(before_t)?;

    // Real resets, in another network namespace (an "application pod"), on loopback. Two rounds:
    // a port's series appears with the first reset on it, at 1, and rate()/increase() see only
    // what a series gains after its first sample, so the panels' rates show the second round.
    let app = NetNs::new()?;
    let mut expected: BTreeMap<(u16, String, String), f64> = BTreeMap::new();
    let mut ports = BTreeMap::new();
    for round in 1..=2 {
        for name in ["refused_v4", "linger0", "stale_keepalive", "half_open_idle", "listener_closed"] {
            let scn = scenarios::find(name).with_context(|| format!("scenario {name}"))?;
            let out = scenarios::run_in(&app, &scn)?;
            eprintln!(
                "round {round}: scenario {name} on port {}: {:?}",
                out.port, out.notes
            );
            ports.insert(name, out.port);
            for e in &out.expect {
                *expected
                    .entry((out.port, e.dir.label().to_string(), e.cause.to_string()))
                    .or_default() += e.count as f64;
            }
        }
        // Through Prometheus: the exact counts on the scenarios' ports.
        let port_re = ports
            .values()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join("|");
        let q = format!(
            "sum by (port, direction, cause) (rstwatch_resets_total{{port=~\"{port_re}\"}})"
        );
        let mut seen = BTreeMap::new();
        let r = wait_until(
            "Prometheus has the scenarios' resets",
            Duration::from_secs(20),
            || {
                seen = rows(&p.instant(&q, now())?)
                    .into_iter()
                    .filter(|(_, v)| *v != 0.0)
                    .map(|(l, v)| {
                        (
                            (
                                l["port"].parse::<u16>().unwrap_or(0),
                                l["direction"].clone(),
                                l["cause"].clone(),
                            ),
                            v,
                        )
                    })
                    .collect::<BTreeMap<_, _>>();
                Ok(seen == expected)
            },
        );
        r.with_context(|| {
            format!(
                "round {round}: {q}\nPrometheus has {seen:?}\nexpected     {expected:?}\n{}",
                daemon.log_tail()
            )
        })?;
        eprintln!("round {round}: Prometheus has exactly {expected:?}");
        // One more scrape before the next round.
        std::thread::sleep(Duration::from_millis(1200));
    }
    drop(app);
    let causes: BTreeSet<(String, String)> = expected
        .keys()
        .map(|(_, d, c)| (d.clone(), c.clone()))
        .collect();
    let after_t = now();
    // ... and rstwatch_resets_total rose for every expected cause (other tests on this host may add
    // resets of their own at the same time, hence >=).
    let after = by_cause(after_t)?;
    for dir_cause in &causes {
        let want: f64 = expected
            .iter()
            .filter(|((_, d, c), _)| (d, c) == (&dir_cause.0, &dir_cause.1))
            .map(|(_, v)| v)
            .sum();
        let rose = after.get(dir_cause).copied().unwrap_or(0.0)
            - before.get(dir_cause).copied().unwrap_or(0.0);
        ensure!(
            rose >= want,
            "rstwatch_resets_total{{direction={:?}, cause={:?}}} rose by {rose}, expected at least {want}",
            dir_cause.0,
            dir_cause.1
        );
        eprintln!(
            "rstwatch_resets_total{{direction=\"{}\", cause=\"{}\"}} rose by {rose}",
            dir_cause.0, dir_cause.1
        );
    }
    // One more scrape, so that rates over short windows see the new values twice.
    std::thread::sleep(Duration::from_millis(2500));
    let t_end = now();

    // Every metric name the dashboard and the alerts use exists in Prometheus.
    let names: BTreeSet<String> = p
        .api("/api/v1/label/__name__/values")?
        .arr()
        .iter()
        .filter_map(|v| v.str().map(String::from))
        .collect();
    let d = dashboard()?;
    let alerts_text = std::fs::read_to_string(&alerts)?;
    let dash_text = std::fs::read_to_string(deploy().join("grafana/rstwatch-dashboard.json"))?;
    let mut problems = Vec::new();
    for text in [&alerts_text, &dash_text] {
        for (i, _) in text.match_indices("rstwatch_") {
            let name: String = text[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            // "rstwatch_cause_observable" and similar are only mentioned in descriptions.
            let is_series = ["_total", "_bucket", "_info", "_attached"]
                .iter()
                .any(|s| name.ends_with(s));
            if is_series && !names.contains(&name) {
                problems.push(format!(
                    "metric {name} is used but Prometheus has no such series"
                ));
            }
        }
    }

    // Every dashboard query: parses and returns data.
    let vars = template_vars(&d);
    let range = format!("{}s", (t_end - started).ceil() as u64 + 60);
    let start = before_t - 5.0;
    let mut checked = 0;
    let mut results: BTreeMap<String, Json> = BTreeMap::new();
    for q in panel_queries(&d) {
        let expr = expand(&q.expr, &vars, "10s", &range);
        let label = format!("panel {:?} ({}) {}", q.panel, q.kind, q.ref_id);
        if expr.contains('$') {
            problems.push(format!("{label}: unexpanded variable in {expr}"));
            continue;
        }
        let res = if q.instant {
            p.instant(&expr, t_end)
        } else {
            p.range(&expr, start, t_end, 1.0)
        };
        match res {
            Ok(data) if result_len(&data) > 0 => {
                checked += 1;
                results.insert(format!("{}/{}", q.panel, q.ref_id), data);
            }
            Ok(_) if q.kubernetes_only => checked += 1,
            Ok(_) => problems.push(format!("{label}: no data for {expr}")),
            Err(e) => problems.push(format!("{label}: {e:#}\n    {expr}")),
        }
    }
    // ... and shows the scenarios where it should, with the dashboard's port filter set to the
    // scenarios' ports (other tests on this host make resets of their own on other ports).
    let mut our_vars = vars.clone();
    our_vars.insert(
        "port".into(),
        ports
            .values()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join("|"),
    );
    let (refused, stale, idle, unanswered) = (
        ports["refused_v4"],
        ports["stale_keepalive"],
        ports["half_open_idle"],
        ports["listener_closed"],
    );
    // Some value > 0 in some series (whose `port` label is `port`, if given).
    let positive_on = |data: &Json, port: Option<u16>| {
        let val = |p: &Json| {
            p.arr()
                .get(1)
                .and_then(|v| v.str())
                .and_then(|s| s.parse::<f64>().ok())
                .unwrap_or(f64::NAN)
        };
        data.get("result").arr().iter().any(|r| {
            port.is_none_or(|p| r.get("metric").get("port").str() == Some(p.to_string().as_str()))
                && (r.get("values").arr().iter().any(|v| val(v) > 0.0) || val(r.get("value")) > 0.0)
        })
    };
    let semantic: [(&str, Option<u16>); 8] = [
        ("top service ports", Some(refused)),
        ("reset before any response", Some(unanswered)),
        ("stale-connection resets", Some(stale)),
        ("data after close", Some(stale)),
        ("idle resets by service port", Some(idle)),
        ("idle time before received resets", None),
        ("resets sent by cause", None),
        ("resets received by cause", None),
    ];
    for (title_part, port) in semantic {
        let Some(q) = panel_queries(&d)
            .into_iter()
            .find(|q| q.panel.to_lowercase().contains(title_part))
        else {
            problems.push(format!("no panel {title_part:?}"));
            continue;
        };
        let expr = expand(&q.expr, &our_vars, "10s", &range);
        let data = if q.instant {
            p.instant(&expr, t_end)
        } else {
            p.range(&expr, start, t_end, 1.0)
        };
        match data {
            Ok(data) if positive_on(&data, port) => {}
            Ok(data) => problems.push(format!(
                "panel {:?}: no positive value{} in {:?}\n    {expr}",
                q.panel,
                port.map(|p| format!(" on port {p}")).unwrap_or_default(),
                rows(&data)
            )),
            Err(e) => problems.push(format!("panel {:?}: {e:#}", q.panel)),
        }
    }
    match results
        .iter()
        .find(|(k, _)| k.to_lowercase().contains("probes attached per node"))
    {
        Some((_, d)) if rows(d).len() >= 3 && rows(d).iter().all(|(_, v)| *v == 1.0) => {}
        other => problems.push(format!(
            "panel \"Probes attached per node\": every probe should be 1: {:?}",
            other.map(|(_, d)| rows(d))
        )),
    }

    // Template variables.
    for (name, sel, label) in label_values_queries(&d)? {
        let sel = expand(&sel, &vars, "10s", &range);
        match p.api(&format!(
            "/api/v1/label/{label}/values?match[]={}&start={start:.3}&end={t_end:.3}",
            urlencode(&sel)
        )) {
            Ok(v) if !v.arr().is_empty() => checked += 1,
            Ok(_) => problems.push(format!(
                "variable {name}: no values for label_values({sel}, {label})"
            )),
            Err(e) => problems.push(format!("variable {name}: {e:#}")),
        }
    }

    // Alert rules: loaded, evaluated by Prometheus without error, each expression parses.
    let n_alerts = alerts_text
        .lines()
        .filter(|l| l.trim_start().starts_with("- alert:"))
        .count();
    let mut rules = Vec::new();
    wait_until(
        "every alert rule evaluated",
        Duration::from_secs(15),
        || {
            rules = p
                .api("/api/v1/rules")?
                .get("groups")
                .arr()
                .iter()
                .flat_map(|g| g.get("rules").arr().iter().cloned())
                .filter(|r| r.get("type").str() == Some("alerting"))
                .collect::<Vec<_>>();
            Ok(rules.len() == n_alerts
                && rules.iter().all(|r| {
                    r.get("lastEvaluation")
                        .str()
                        .is_some_and(|t| !t.starts_with("0001-"))
                }))
        },
    )
    .with_context(|| {
        format!(
            "{} alerting rules loaded, alerts.yml has {n_alerts}\n{}",
            rules.len(),
            prom.log_tail()
        )
    })?;
    for r in &rules {
        let name = r.get("name").str().unwrap_or("?");
        if r.get("health").str() != Some("ok") {
            problems.push(format!(
                "alert {name}: health {:?}: {:?}",
                r.get("health").str(),
                r.get("lastError").str()
            ));
        }
        let query = r.get("query").str().unwrap_or("");
        match p.instant(query, t_end) {
            Ok(_) => checked += 1,
            Err(e) => problems.push(format!("alert {name}: {e:#}\n    {query}")),
        }
        let firing: Vec<String> = r
            .get("alerts")
            .arr()
            .iter()
            .map(|a| format!("{:?}", a.get("labels")))
            .collect();
        if (name == "RstwatchDown" || name == "RstwatchProbeNotAttached") && !firing.is_empty() {
            problems.push(format!(
                "alert {name} is active while rstwatch is up and attached: {firing:?}"
            ));
        }
    }

    // Stop both by PID: rstwatch must exit 0 on SIGTERM (pod termination).
    let prom_status = prom.stop(Duration::from_secs(10));
    let daemon_status = daemon.stop(Duration::from_secs(10));
    drop(pod);
    ensure!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
    let st = daemon_status?;
    ensure!(
        st.success(),
        "rstwatch exited with {st} on SIGTERM\n{}",
        daemon.log_tail()
    );
    prom_status?;
    eprintln!("{checked} dashboard, variable and alert queries checked against Prometheus");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

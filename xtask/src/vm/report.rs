//! Verdicts: the `RSTW ...` console lines of one kernel read into a report, whether it passed, and
//! its readable rendering.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

/// What one kernel showed.
pub(super) struct Report {
    pub(super) name: String,
    pub(super) release: String,
    log: PathBuf,
    probes: Vec<(String, bool)>,
    blind: Vec<String>,
    /// (scenario, verdict, expected, got)
    scenarios: Vec<(String, String, String, String)>,
    /// `RSTW refuses ...` lines: (what, exit code, message).
    refusals: Vec<(String, i32, String)>,
    finished: bool,
    pub(super) vm: bool,
    pub(super) problem: Option<String>,
}

impl Report {
    pub(super) fn broken(name: &str, problem: String) -> Report {
        Report {
            name: name.to_string(),
            release: "?".into(),
            log: PathBuf::new(),
            probes: vec![],
            blind: vec![],
            scenarios: vec![],
            refusals: vec![],
            finished: false,
            vm: false,
            problem: Some(problem),
        }
    }

    pub(super) fn parse(name: &str, console: &str, log: PathBuf) -> Report {
        let mut report = Report::broken(name, String::new());
        report.problem = None;
        report.log = log;
        report.vm = true;
        for line in console.lines() {
            let Some(at) = line.find("RSTW ") else { continue };
            let line = line[at + 5..].trim_end_matches('\r');
            let mut words = line.splitn(2, ' ');
            let (tag, rest) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
            match tag {
                "kernel" => report.release = rest.to_string(),
                "probe" => {
                    let (probe, value) = rest.split_once(' ').unwrap_or((rest, "0"));
                    report.probes.push((probe.to_string(), value == "1"));
                }
                "blind" => report.blind.push(rest.to_string()),
                "scenario" => {
                    let mut parts = rest.splitn(3, ' ');
                    let scenario = parts.next().unwrap_or("").to_string();
                    let verdict = parts.next().unwrap_or("FAIL").to_string();
                    let tail = parts.next().unwrap_or("");
                    let (expected, got) = match tail.split_once(" got=") {
                        Some((e, g)) => (e.trim_start_matches("expected=").to_string(), g.to_string()),
                        None => (String::new(), tail.to_string()),
                    };
                    report.scenarios.push((scenario, verdict, expected, got));
                }
                "refuses" => {
                    let mut parts = rest.splitn(3, ' ');
                    let what = parts.next().unwrap_or("").to_string();
                    let code = parts
                        .next()
                        .and_then(|c| c.strip_prefix("exit="))
                        .and_then(|c| c.parse().ok());
                    report
                        .refusals
                        .push((what, code.unwrap_or(-1), parts.next().unwrap_or("").to_string()));
                }
                "done" => report.finished = true,
                _ => {}
            }
        }
        if !report.finished {
            report.problem = Some("the runner did not finish (see the console log)".into());
        }
        report
    }

    pub(super) fn count(&self, verdict: &str) -> usize {
        self.scenarios.iter().filter(|(_, v, _, _)| v == verdict).count()
    }

    /// The kernel refused clearly: non-zero exit and a message that names BTF.
    fn refusal_ok(&self, what: &str, code: i32, message: &str) -> bool {
        code != 0 && (what != "no_btf" || message.contains("BTF"))
    }

    pub(super) fn passed(&self) -> bool {
        self.problem.is_none()
            && self.finished
            && !self.scenarios.is_empty()
            && self.count("FAIL") == 0
            && (!self.vm || !self.refusals.is_empty())
            && self.refusals.iter().all(|(w, c, m)| self.refusal_ok(w, *c, m))
    }

    pub(super) fn render(&self, took: Duration) -> String {
        let mut out = format!(
            "\n== {} ({}), {:.0} s ==\n",
            self.name,
            self.release,
            took.as_secs_f64()
        );
        if let Some(problem) = &self.problem {
            let _ = writeln!(out, "  problem: {problem}");
        }
        let attached: Vec<_> = self
            .probes
            .iter()
            .filter(|(_, on)| *on)
            .map(|(p, _)| p.as_str())
            .collect();
        let missing: Vec<_> = self
            .probes
            .iter()
            .filter(|(_, on)| !*on)
            .map(|(p, _)| p.as_str())
            .collect();
        let _ = writeln!(out, "  probes attached: {}", attached.join(" "));
        if !missing.is_empty() {
            let _ = writeln!(out, "  not attached:    {}", missing.join(" "));
        }
        let _ = writeln!(
            out,
            "  declared blind:  {}",
            if self.blind.is_empty() {
                "nothing".to_string()
            } else {
                self.blind.join(" ")
            }
        );
        for (scenario, verdict, expected, got) in &self.scenarios {
            let seen = if expected == got || verdict == "ok" {
                got.clone()
            } else {
                format!("expected {expected}, got {got}")
            };
            let _ = writeln!(out, "  {verdict:<5} {scenario:<22} {seen}");
        }
        for (what, code, message) in &self.refusals {
            let verdict = if self.refusal_ok(what, *code, message) {
                "ok"
            } else {
                "FAIL"
            };
            let _ = writeln!(out, "  {verdict:<5} refuses {what}: exit {code}: {message}");
        }
        let _ = writeln!(out, "  console log: {}", self.log.display());
        out
    }
}

/// One line per kernel after all of them ran.
pub(super) fn print_summary(results: &[Report]) {
    println!("\nvm-test summary");
    for r in results {
        println!(
            "  {:<8} {:<28} ok {:>2}  blind {:>2}  FAIL {:>2}{}",
            r.name,
            r.release,
            r.count("ok"),
            r.count("blind"),
            r.count("FAIL"),
            r.problem
                .as_deref()
                .map(|p| format!("  ({p})"))
                .unwrap_or_default()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_lines_make_a_report() {
        let console = "noise\r\nRSTW kernel 6.1.0-56-amd64\r\n[ 1.0] RSTW probe tcp_send_reset 1\r\nRSTW probe tcp_v4_send_reset 0\nRSTW blind sent/no_listener\nRSTW scenario refused_v4 blind expected=sent/no_listener/none+1 got=received/connection_refused/syn_sent+1\nRSTW scenario linger0 ok expected=a got=a\nRSTW refuses no_btf exit=1 rstwatch: error: no BTF\nRSTW done failed=0\n";
        let r = Report::parse("6.1", console, PathBuf::from("x.log"));
        assert_eq!(r.release, "6.1.0-56-amd64");
        assert_eq!(
            r.probes,
            vec![
                ("tcp_send_reset".to_string(), true),
                ("tcp_v4_send_reset".to_string(), false)
            ]
        );
        assert_eq!((r.count("ok"), r.count("blind"), r.count("FAIL")), (1, 1, 0));
        assert!(r.passed());
        let failed = console.replace("linger0 ok", "linger0 FAIL");
        assert!(!Report::parse("6.1", &failed, PathBuf::new()).passed());
        let unfinished = console.replace("RSTW done failed=0\n", "");
        assert!(!Report::parse("6.1", &unfinished, PathBuf::new()).passed());
        let accepted = console.replace("exit=1", "exit=0");
        assert!(!Report::parse("6.1", &accepted, PathBuf::new()).passed());
    }
}

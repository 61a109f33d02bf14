//! Which kernels have which hook, what each gives, and what this node can therefore see.
//!
//! Decided once at start-up from what the running kernel reports (tracefs formats, BTF, and a
//! trial attach of each program): the daemon logs it in one block and exports it as
//! `rstwatch_probe_attached{probe}` and `rstwatch_cause_observable{direction,cause}`.
//! README's "Kernel compatibility" table is [`markdown_table`] (a test keeps them equal), made from
//! the probe table `rstwatch_common::probes::PROBES`.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use rstwatch_common::probes::{self, PROBES};

use super::RstReason;
use super::causes::{CAUSES, Cause, Direction};
use crate::load::{attach::ProbeStatus, kernel::KernelLayout};

/// What the running kernel gave rstwatch, after the trial attach.
#[derive(Clone, Debug, Default)]
pub struct Coverage {
    /// Probes (`Probe::name`) that are attached.
    pub attached: BTreeSet<&'static str>,
    /// `enum sk_rst_reason` names this kernel's `tcp_send_reset` reports (empty before 6.10).
    pub reasons: BTreeSet<RstReason>,
}

/// Whether every reset of a cause is counted under that cause on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Visibility {
    Seen,
    /// Not at all, or not all of them (some are counted under another cause): why.
    Blind(&'static str),
}

/// Causes the classifier tells apart only with the kernel's reason; without it the listed
/// reasons (from socket facts alone) are where it errs. Kept next to `classify_sent_without_reason`.
pub const AMBIGUOUS_WITHOUT_REASON: &[(Cause, RstReason, &str)] = &[
    (
        Cause::AcceptQueueOverflow,
        RstReason::InvalidSyn,
        "a bare ACK at a listener also comes from a half-open peer: both count as accept_queue_overflow",
    ),
    (
        Cause::UnknownConnection,
        RstReason::InvalidSyn,
        "a half-open peer's bare ACK at a listener counts as accept_queue_overflow",
    ),
];

impl Coverage {
    /// What the start-up decision gave: the attached probes, and the reasons this kernel's
    /// `tcp_send_reset` reports.
    pub fn of(status: &[(&'static str, ProbeStatus)], layout: &KernelLayout) -> Coverage {
        Coverage {
            attached: status
                .iter()
                .filter(|(_, how)| matches!(how, ProbeStatus::Attached(_)))
                .map(|(probe, _)| *probe)
                .collect(),
            reasons: if layout.send_reset_has_reason {
                layout
                    .reason_names
                    .values()
                    .map(|name| RstReason::from_name(name))
                    .collect()
            } else {
                Default::default()
            },
        }
    }

    fn has(&self, probe: &str) -> bool {
        self.attached.contains(probe)
    }

    /// Resets sent for a segment with no full socket (no listener, time-wait) are seen: by the
    /// tracepoint itself since 6.10 (the same kernels that report a reason), else by kprobes.
    pub fn sees_socketless_resets(&self) -> bool {
        !self.reasons.is_empty() || probes::fallbacks_for("tcp_send_reset").all(|probe| self.has(probe.name))
    }

    pub fn visibility(&self, direction: Direction, cause: Cause) -> Visibility {
        use Visibility::*;
        match direction {
            Direction::Sent if !self.has("tcp_send_reset") => return Blind("tcp_send_reset is not attached"),
            Direction::Received if !self.has("tcp_receive_reset") => {
                return Blind("tcp_receive_reset is not attached");
            }
            _ => {}
        }
        if direction == Direction::Received {
            return match cause {
                Cause::Injected if !self.has("kfree_skb") => {
                    Blind("needs skb:kfree_skb with drop reasons (5.17+) to recognise the firewall's resets")
                }
                _ => Seen,
            };
        }
        let socketless = matches!(
            cause,
            Cause::NoListener | Cause::UnknownConnection | Cause::TimewaitSegment | Cause::DataAfterClose
        );
        if socketless && !self.sees_socketless_resets() {
            return Blind(
                "before 6.10 tcp_send_reset skips resets sent without a full socket, and the \
                 tcp_v4/v6_send_reset kprobes are not attached (CONFIG_KPROBES?)",
            );
        }
        for (ambiguous, reason, why) in AMBIGUOUS_WITHOUT_REASON {
            if *ambiguous == cause && !self.reasons.contains(reason) {
                return Blind(why);
            }
        }
        Seen
    }

    /// Every (direction, cause) the metrics know, with its visibility here.
    pub fn table(&self) -> Vec<(Direction, Cause, Visibility)> {
        CAUSES
            .iter()
            .flat_map(|info| info.directions.iter().map(move |dir| (*dir, info.cause)))
            .map(|(dir, cause)| (dir, cause, self.visibility(dir, cause)))
            .collect()
    }
}

/// The start-up block: each hook, how it is attached (or why not), and the blind spots.
pub fn summary(release: &str, how: &[(&'static str, ProbeStatus)], coverage: &Coverage) -> String {
    let mut text = format!("kernel {release}: what this node can see");
    for hook in PROBES {
        let status = match how.iter().find(|(probe, _)| *probe == hook.name) {
            Some((_, ProbeStatus::Attached(kind))) => format!("attached ({kind})"),
            Some((_, ProbeStatus::NotNeeded(why))) => format!("not needed: {why}"),
            Some((_, ProbeStatus::Missing(why))) => format!("not attached ({}): {why}", hook.when_missing),
            None => "not attached".to_string(),
        };
        let _ = write!(text, "\n  {:<20} {status}", hook.name);
    }
    let _ = write!(
        text,
        "\n  reset reasons: {}",
        if coverage.reasons.is_empty() {
            "none on this kernel: sent resets are classified from socket and segment facts".to_string()
        } else {
            format!("{} known to this build", coverage.reasons.len())
        }
    );
    let blind: Vec<_> = coverage
        .table()
        .into_iter()
        .filter_map(|(dir, cause, visibility)| match visibility {
            Visibility::Seen => None,
            Visibility::Blind(why) => Some(format!("\n    {}/{}: {why}", dir.label(), cause.label())),
        })
        .collect();
    if blind.is_empty() {
        text.push_str("\n  every cause is observable");
    } else {
        let _ = write!(
            text,
            "\n  not (fully) observable here ({}):{}",
            blind.len(),
            blind.concat()
        );
    }
    text
}

/// README's compatibility table.
#[cfg(test)]
pub fn markdown_table() -> String {
    let mut out = String::from("| probe | hook | kernels | gives | when missing |\n|---|---|---|---|---|\n");
    for h in PROBES {
        let _ = writeln!(
            out,
            "| `{}` | {} | {} | {} | {} |",
            h.name, h.hook, h.kernels, h.gives, h.when_missing
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_tracepoints() -> Vec<&'static str> {
        probes::tracepoints().map(|tp| tp.name).collect()
    }

    fn coverage(attached: &[&'static str], reasons: &[RstReason]) -> Coverage {
        Coverage {
            attached: attached.iter().copied().collect(),
            reasons: reasons.iter().copied().collect(),
        }
    }

    fn blind(c: &Coverage) -> Vec<String> {
        c.table()
            .into_iter()
            .filter(|(_, _, v)| *v != Visibility::Seen)
            .map(|(d, cause, _)| format!("{}/{}", d.label(), cause.label()))
            .collect()
    }

    /// Every reason name 6.12+ has (6.18's BTF); 6.10/6.11 lack the active ones.
    fn reasons_of_6_12() -> Vec<RstReason> {
        use RstReason::*;
        vec![
            NotSpecified,
            NoSocket,
            InvalidAckSequence,
            Rfc7323Paws,
            TooOldAck,
            AckUnsentData,
            Flags,
            OldAck,
            AbortOnData,
            TimewaitSocket,
            InvalidSyn,
            AbortOnClose,
            AbortOnLinger,
            AbortOnMemory,
            State,
            KeepaliveTimeout,
            DisconnectWithData,
            Other,
        ]
    }

    #[test]
    fn kernel_6_12_and_later_see_everything() {
        let c = coverage(&all_tracepoints(), &reasons_of_6_12());
        assert!(c.sees_socketless_resets());
        assert_eq!(blind(&c), Vec::<String>::new());
    }

    #[test]
    fn kernel_6_1_with_kprobes() {
        let mut attached = all_tracepoints();
        attached.extend(probes::fallbacks_for("tcp_send_reset").map(|probe| probe.name));
        let c = coverage(&attached, &[]);
        assert_eq!(
            blind(&c),
            ["sent/unknown_connection", "sent/accept_queue_overflow"]
        );
    }

    #[test]
    fn kernel_6_1_without_kprobes() {
        let c = coverage(&all_tracepoints(), &[]);
        assert_eq!(
            blind(&c),
            [
                "sent/no_listener",
                "sent/unknown_connection",
                "sent/data_after_close",
                "sent/timewait_segment",
                "sent/accept_queue_overflow",
            ]
        );
        // One kprobe alone does not do: IPv6 resets would still be missed.
        let half = coverage(&[&all_tracepoints()[..], &["tcp_v4_send_reset"]].concat(), &[]);
        assert!(!half.sees_socketless_resets());
    }

    #[test]
    fn kernel_6_10_lacks_the_active_reasons() {
        use RstReason::*;
        let reasons: Vec<_> = reasons_of_6_12()
            .into_iter()
            .filter(|r| {
                !matches!(
                    r,
                    AbortOnClose
                        | AbortOnLinger
                        | AbortOnMemory
                        | State
                        | KeepaliveTimeout
                        | DisconnectWithData
                )
            })
            .collect();
        let c = coverage(&all_tracepoints(), &reasons);
        // INVALID_SYN is there, and the active causes come from the socket facts.
        assert_eq!(blind(&c), Vec::<String>::new());
    }

    #[test]
    fn old_kernels_without_drop_reasons_or_error_reports() {
        let c = coverage(
            &["tcp_send_reset", "tcp_receive_reset", "inet_sock_set_state"],
            &reasons_of_6_12(),
        );
        assert_eq!(blind(&c), ["received/injected"]);
    }

    #[test]
    fn summary_names_every_hook_and_each_blind_spot() {
        let how = vec![
            ("tcp_send_reset", ProbeStatus::Attached("tracepoint")),
            (
                "tcp_v4_send_reset",
                ProbeStatus::Missing("kprobes are not available".to_string()),
            ),
            ("tcp_v6_send_reset", ProbeStatus::NotNeeded("for the test")),
        ];
        let text = summary("6.1.0-test", &how, &coverage(&all_tracepoints(), &[]));
        for hook in PROBES {
            assert!(text.contains(hook.name), "{text}");
        }
        assert!(
            text.contains("tcp_send_reset       attached (tracepoint)"),
            "{text}"
        );
        assert!(
            text.contains("not observable): kprobes are not available"),
            "{text}"
        );
        assert!(
            text.contains("tcp_v6_send_reset    not needed: for the test"),
            "{text}"
        );
        assert!(text.contains("sent/no_listener: before 6.10"), "{text}");
        assert!(text.contains("not (fully) observable here (5)"), "{text}");
    }

    #[test]
    fn readme_has_the_compatibility_table() {
        let readme = include_str!("../../../README.md");
        assert!(
            readme.contains(&markdown_table()),
            "README.md's kernel compatibility table is out of date; paste this:\n{}",
            markdown_table()
        );
    }
}

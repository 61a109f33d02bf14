//! Struct member offsets and enum values from the running kernel's BTF.
//!
//! Rust eBPF has no CO-RE relocations, so the programs get plain byte offsets that are looked
//! up here, by member name, in the kernel's own type information.

use std::path::Path;

use anyhow::{Context as _, Result, anyhow, bail};
use btf_rs::{Btf, Member, Struct, Type};

pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

pub struct KernelBtf {
    btf: Btf,
}

/// Where a (possibly nested) member lives, in bytes from the start of the outer struct.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemberInfo {
    pub offset: u32,
    pub size: u32,
}

impl KernelBtf {
    pub fn vmlinux() -> Result<Self> {
        Self::open(Path::new(VMLINUX)).context(
            "rstwatch needs the kernel's BTF (CONFIG_DEBUG_INFO_BTF=y) to find socket fields",
        )
    }

    pub fn open(path: &Path) -> Result<Self> {
        let btf =
            Btf::from_file(path).with_context(|| format!("reading BTF {}", path.display()))?;
        Ok(Self { btf })
    }

    /// Resolves a dotted member path (`inet_conn.icsk_ack.lrcvtime`) inside `struct <strukt>`.
    /// Members of anonymous structs and unions are found as if they were direct members,
    /// as in C.
    pub fn member(&self, strukt: &str, path: &str) -> Result<MemberInfo> {
        let mut ty = self.named_struct(strukt)?;
        let mut bits = 0u32;
        let mut walked = String::new();
        for name in path.split('.') {
            let (Type::Struct(s) | Type::Union(s)) = &ty else {
                bail!(
                    "struct {strukt}: {walked} is a {}, not a struct or union",
                    ty.name()
                );
            };
            let (at, member) = self
                .find(s, name)?
                .ok_or_else(|| anyhow!("struct {strukt} has no member {path}"))?;
            if member.bitfield_size().is_some_and(|b| b != 0) || at % 8 != 0 {
                bail!("struct {strukt} member {path} is a bitfield; rstwatch reads whole bytes");
            }
            bits += at;
            ty = self.peel(self.btf.resolve_chained_type(&member)?)?;
            if !walked.is_empty() {
                walked.push('.');
            }
            walked.push_str(name);
        }
        let size = self
            .size_of(&ty)
            .with_context(|| format!("size of {strukt}.{path}"))?;
        Ok(MemberInfo {
            offset: bits / 8,
            size,
        })
    }

    /// All values of `enum <name>` (or a 64-bit enum), in declaration order.
    pub fn enum_values(&self, name: &str) -> Result<Vec<(i64, String)>> {
        for ty in self.btf.resolve_types_by_name(name)? {
            let values = match &ty {
                Type::Enum(e) => e
                    .members
                    .iter()
                    .map(|m| {
                        let v = if e.is_signed() {
                            m.val() as i32 as i64
                        } else {
                            m.val() as i64
                        };
                        Ok((v, self.btf.resolve_name(m)?))
                    })
                    .collect::<Result<Vec<_>>>()?,
                Type::Enum64(e) => e
                    .members
                    .iter()
                    .map(|m| Ok((m.val() as i64, self.btf.resolve_name(m)?)))
                    .collect::<Result<Vec<_>>>()?,
                _ => continue,
            };
            return Ok(values);
        }
        bail!("the kernel's BTF has no enum {name}")
    }

    pub fn enum_value(&self, name: &str, member: &str) -> Result<i64> {
        self.enum_values(name)?
            .into_iter()
            .find(|(_, n)| n == member)
            .map(|(v, _)| v)
            .ok_or_else(|| anyhow!("enum {name} has no value {member}"))
    }

    /// The argument types of a tracepoint as a BTF tracepoint (tp_btf) program sees them: the
    /// `TP_PROTO` of `btf_trace_<event>`, without its leading `void *__data`. Each is named as C
    /// would ("struct sock *", "enum sk_rst_reason", "int"); qualifiers are dropped.
    pub fn tracepoint_args(&self, event: &str) -> Result<Vec<String>> {
        let typedef = format!("btf_trace_{event}");
        let ty = self
            .btf
            .resolve_types_by_name(&typedef)
            .with_context(|| format!("the kernel's BTF has no {typedef}: no BTF tracepoint for {event}"))?
            .into_iter()
            .find(|t| matches!(t, Type::Typedef(_)))
            .ok_or_else(|| anyhow!("{typedef} is not a typedef"))?;
        let Type::Ptr(ptr) = self.peel(ty)? else { bail!("{typedef} is not a function pointer") };
        let Type::FuncProto(proto) = self.peel(self.btf.resolve_chained_type(&ptr)?)? else {
            bail!("{typedef} does not point to a function prototype");
        };
        proto
            .parameters
            .iter()
            .skip(1)
            .map(|param| self.c_name(self.btf.resolve_chained_type(param)?))
            .collect()
    }

    fn c_name(&self, ty: Type) -> Result<String> {
        let ty = self.peel(ty)?;
        Ok(match &ty {
            Type::Ptr(p) => format!("{} *", self.c_name(self.btf.resolve_chained_type(p)?)?),
            Type::Struct(s) => format!("struct {}", self.btf.resolve_name(s).unwrap_or_default()),
            Type::Union(u) => format!("union {}", self.btf.resolve_name(u).unwrap_or_default()),
            Type::Enum(e) => format!("enum {}", self.btf.resolve_name(e).unwrap_or_default()),
            Type::Enum64(e) => format!("enum {}", self.btf.resolve_name(e).unwrap_or_default()),
            Type::Int(i) => self.btf.resolve_name(i).unwrap_or_default(),
            Type::Void => "void".to_string(),
            other => other.name().to_string(),
        })
    }

    fn named_struct(&self, name: &str) -> Result<Type> {
        self.btf
            .resolve_types_by_name(name)?
            .into_iter()
            .find(|t| matches!(t, Type::Struct(_) | Type::Union(_)))
            .ok_or_else(|| anyhow!("the kernel's BTF has no struct {name}"))
    }

    /// Finds `name` in `s`, descending into anonymous members; the offset is in bits from `s`.
    fn find(&self, s: &Struct, name: &str) -> Result<Option<(u32, Member)>> {
        for m in &s.members {
            // An anonymous member has no name string at all in some BTF encoders.
            let m_name = self.btf.resolve_name(m).unwrap_or_default();
            if m_name == name {
                return Ok(Some((m.bit_offset(), m.clone())));
            }
            if m_name.is_empty()
                && let Type::Struct(inner) | Type::Union(inner) =
                    self.peel(self.btf.resolve_chained_type(m)?)?
                && let Some((at, found)) = self.find(&inner, name)?
            {
                return Ok(Some((m.bit_offset() + at, found)));
            }
        }
        Ok(None)
    }

    /// Strips typedefs and qualifiers, which do not change layout.
    fn peel(&self, mut ty: Type) -> Result<Type> {
        loop {
            ty = match &ty {
                Type::Typedef(t) => self.btf.resolve_chained_type(t)?,
                Type::Const(t) | Type::Volatile(t) | Type::Restrict(t) => {
                    self.btf.resolve_chained_type(t)?
                }
                Type::TypeTag(t) => self.btf.resolve_chained_type(t)?,
                _ => return Ok(ty),
            };
        }
    }

    fn size_of(&self, ty: &Type) -> Result<u32> {
        let size = match ty {
            Type::Int(t) => t.size(),
            Type::Ptr(_) => size_of::<usize>(),
            Type::Struct(t) | Type::Union(t) => t.size(),
            Type::Enum(t) => t.size(),
            Type::Enum64(t) => t.size(),
            Type::Float(t) => t.size(),
            Type::Array(a) => {
                let element = self.peel(self.btf.resolve_chained_type(a)?)?;
                return Ok(a.len() as u32 * self.size_of(&element)?);
            }
            other => bail!("a {} has no size", other.name()),
        };
        Ok(size as u32)
    }
}

/// The live BTF, or None (with a note) where the test runs without one.
#[cfg(test)]
pub(crate) fn live_for_tests() -> Option<KernelBtf> {
    match KernelBtf::vmlinux() {
        Ok(btf) => Some(btf),
        Err(e) => {
            eprintln!("skipping: {e:#}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_nested_and_anonymous_members() {
        let Some(btf) = live_for_tests() else { return };
        // `__sk_common` is the first member of struct sock.
        let state = btf.member("sock", "__sk_common.skc_state").unwrap();
        assert_eq!(state, btf.member("sock_common", "skc_state").unwrap());
        assert_eq!(state.size, 1);
        // skc_num sits in an anonymous struct inside an anonymous union.
        let dport = btf.member("sock_common", "skc_dport").unwrap();
        let num = btf.member("sock_common", "skc_num").unwrap();
        assert_eq!((num.offset, num.size), (dport.offset + 2, 2));
        assert_eq!(btf.member("sock_common", "skc_v6_daddr").unwrap().size, 16);
        let lrcvtime = btf
            .member("tcp_sock", "inet_conn.icsk_ack.lrcvtime")
            .unwrap();
        assert_eq!(lrcvtime.size, 4);
        assert!(lrcvtime.offset > btf.member("tcp_sock", "inet_conn").unwrap().offset);
    }

    #[test]
    fn reports_what_is_missing() {
        let Some(btf) = live_for_tests() else { return };
        let err = |s, p| format!("{:#}", btf.member(s, p).unwrap_err());
        assert!(err("no_such_struct_here", "x").contains("no struct no_such_struct_here"));
        assert!(err("sock", "sk_no_such_member").contains("sk_no_such_member"));
        assert!(err("sock", "sk_lingertime.x").contains("not a struct"));
        assert!(err("inet_timewait_sock", "tw_transparent").contains("bitfield"));
        assert!(btf.enum_values("no_such_enum_here").is_err());
        assert!(btf.enum_value("sock_flags", "SOCK_NO_SUCH_FLAG").is_err());
    }

    #[test]
    fn tracepoint_arguments_as_tp_btf_sees_them() {
        let Some(btf) = live_for_tests() else { return };
        let args = btf.tracepoint_args("tcp_receive_reset").unwrap();
        assert_eq!(args, ["struct sock *"]);
        let args = btf.tracepoint_args("inet_sock_set_state").unwrap();
        assert_eq!(args, ["struct sock *", "int", "int"]);
        let args = btf.tracepoint_args("tcp_send_reset").unwrap();
        assert_eq!(&args[..2], ["struct sock *", "struct sk_buff *"]);
        assert!(btf.tracepoint_args("no_such_event").is_err());
    }

    #[test]
    fn reads_enums() {
        let Some(btf) = live_for_tests() else { return };
        // The order of enum sock_flags has not changed since 2.6.
        assert_eq!(btf.enum_value("sock_flags", "SOCK_LINGER").unwrap(), 4);
        let reasons = btf.enum_values("sk_rst_reason");
        if let Ok(reasons) = reasons {
            assert!(reasons.contains(&(1, "SK_RST_REASON_NO_SOCKET".to_string())));
        }
    }
}

//! Struct member offsets and enum values from the running kernel's BTF.
//!
//! Rust eBPF has no CO-RE relocations, so the programs get plain byte offsets that are looked
//! up here, by member name, in the kernel's own type information.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::fd::{AsRawFd as _, FromRawFd as _};
use std::path::Path;

use anyhow::{Context as _, Result, anyhow, bail};
use btf_rs::{Backend, Btf, Member, Struct, Type};

pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

/// The kernel's BTF, read in place: btf-rs's cached backend turns the 5 MB file into ~25 MB of
/// heap, which was the daemon's peak memory (issue 12). Mapped, only an index of type offsets
/// (8 bytes a type) is allocated, and a lookup by name scans the types, so the types rstwatch
/// looks up are remembered.
pub struct KernelBtf {
    btf: Btf,
    /// `resolve_types_by_name`, by name: each uncached call scans all ~150k types.
    by_name: RefCell<HashMap<String, Vec<Type>>>,
}

/// A tracepoint as a BTF tracepoint (tp_btf) program sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BtfTracepoint {
    /// The type id of `btf_trace_<event>` in the kernel's BTF: what the program is loaded against.
    pub id: u32,
    /// Argument types, named as C would.
    pub args: Vec<String>,
}

/// The kernel's BTF as aya needs it to load BTF tracepoints: only the `btf_trace_<event>`
/// typedefs, each at its id in the kernel's BTF, every other id a placeholder. aya looks a
/// tp_btf program's target up by name and hands the kernel only its id; this costs ~80 bytes per
/// id below the highest one (~3 MB on 6.18) where `aya::Btf::from_sys_fs` holds the whole BTF,
/// ~19 MB while it parses it: the daemon's start-up peak (issue 12).
pub fn tracepoints_btf<'a>(typedefs: impl IntoIterator<Item = (&'a str, u32)>) -> Result<aya::Btf> {
    const KIND_PTR: u32 = 2;
    const KIND_TYPEDEF: u32 = 8;
    let mut by_id = BTreeMap::new();
    let mut strings = vec![0u8];
    for (event, id) in typedefs {
        by_id.insert(id, strings.len() as u32);
        strings.extend_from_slice(format!("btf_trace_{event}").as_bytes());
        strings.push(0);
    }
    let last = by_id.keys().next_back().copied().unwrap_or(0);
    // Each type is a `struct btf_type` alone (name_off, info, type): a pointer to void, or the typedef.
    let mut types = Vec::with_capacity(last as usize * 12);
    for id in 1..=last {
        let (name, kind) = by_id.get(&id).map_or((0, KIND_PTR), |&name| (name, KIND_TYPEDEF));
        for word in [name, kind << 24, 0] {
            types.extend_from_slice(&word.to_ne_bytes());
        }
    }
    // struct btf_header: magic, version, flags, hdr_len, type_off, type_len, str_off, str_len.
    const HEADER: u32 = 24;
    let mut data = Vec::with_capacity(HEADER as usize + types.len() + strings.len());
    data.extend_from_slice(&0xeb9f_u16.to_ne_bytes());
    data.extend_from_slice(&[1, 0]);
    for word in [
        HEADER,
        0,
        types.len() as u32,
        types.len() as u32,
        strings.len() as u32,
    ] {
        data.extend_from_slice(&word.to_ne_bytes());
    }
    data.extend_from_slice(&types);
    data.extend_from_slice(&strings);
    aya::Btf::parse(&data, aya::Endianness::default()).context("building the BTF of the BTF tracepoints")
}

/// Where a (possibly nested) member lives, in bytes from the start of the outer struct.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemberInfo {
    pub offset: u32,
    pub size: u32,
}

impl KernelBtf {
    pub fn vmlinux() -> Result<Self> {
        Self::open(Path::new(VMLINUX))
            .context("rstwatch needs the kernel's BTF (CONFIG_DEBUG_INFO_BTF=y) to find socket fields")
    }

    pub fn open(path: &Path) -> Result<Self> {
        let btf = match Btf::from_file_with_backend(path, Backend::Mmap) {
            Ok(btf) => btf,
            // sysfs lets /sys/kernel/btf/vmlinux be mapped since 6.16; before, a copy in memory
            // (not on disk) is mapped instead, which still costs only its own 5 MB.
            Err(mmap_error) => {
                log::debug!("mapping {} failed ({mmap_error}); mapping a copy", path.display());
                Self::map_copy(path)?
            }
        };
        Ok(Self {
            btf,
            by_name: RefCell::default(),
        })
    }

    fn map_copy(path: &Path) -> Result<Btf> {
        let mut file = File::open(path).with_context(|| format!("reading BTF {}", path.display()))?;
        // SAFETY: memfd_create with a valid C string; the descriptor is owned by `copy` below.
        let fd = unsafe { libc::memfd_create(c"rstwatch-btf".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error())
                .context("memfd_create for a copy of the kernel's BTF");
        }
        // SAFETY: `fd` was just created and nothing else owns it.
        let mut copy = unsafe { File::from_raw_fd(fd) };
        std::io::copy(&mut file, &mut copy).with_context(|| format!("reading BTF {}", path.display()))?;
        let copy_path = format!("/proc/self/fd/{}", copy.as_raw_fd());
        Btf::from_file_with_backend(&copy_path, Backend::Mmap)
            .with_context(|| format!("reading BTF {} (mapped copy)", path.display()))
    }

    /// Types named `name` (all kinds), remembered for the next lookup.
    fn types_by_name(&self, name: &str) -> Result<Vec<Type>> {
        if let Some(types) = self.by_name.borrow().get(name) {
            return Ok(types.clone());
        }
        let types = self.btf.resolve_types_by_name(name)?;
        self.by_name.borrow_mut().insert(name.to_string(), types.clone());
        Ok(types)
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
        for ty in self.types_by_name(name)? {
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

    /// `btf_trace_<event>`, the typedef a BTF tracepoint (tp_btf) program attaches by: its type id,
    /// and its `TP_PROTO` argument types as the program sees them (without the leading
    /// `void *__data`), each named as C would ("struct sock *", "enum sk_rst_reason", "int");
    /// qualifiers are dropped.
    pub fn tracepoint(&self, event: &str) -> Result<BtfTracepoint> {
        let typedef = format!("btf_trace_{event}");
        let mut found = None;
        for id in self.btf.resolve_ids_by_name(&typedef)? {
            let ty = self.btf.resolve_type_by_id(id)?;
            if matches!(ty, Type::Typedef(_)) {
                found = Some((id, ty));
                break;
            }
        }
        let (id, ty) = found.ok_or_else(|| {
            anyhow!("the kernel's BTF has no typedef {typedef}: no BTF tracepoint for {event}")
        })?;
        let Type::Ptr(ptr) = self.peel(ty)? else {
            bail!("{typedef} is not a function pointer")
        };
        let Type::FuncProto(proto) = self.peel(self.btf.resolve_chained_type(&ptr)?)? else {
            bail!("{typedef} does not point to a function prototype");
        };
        let args = proto
            .parameters
            .iter()
            .skip(1)
            .map(|param| self.c_name(self.btf.resolve_chained_type(param)?))
            .collect::<Result<_>>()?;
        Ok(BtfTracepoint { id, args })
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
        self.types_by_name(name)?
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
                Type::Const(t) | Type::Volatile(t) | Type::Restrict(t) => self.btf.resolve_chained_type(t)?,
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

/// The running kernel's BTF, or None after saying why (a failure under `CI=true`).
#[cfg(test)]
pub(crate) fn live_for_tests() -> Option<KernelBtf> {
    match KernelBtf::vmlinux() {
        Ok(btf) => Some(btf),
        Err(e) => {
            crate::skip::skipped(format_args!("no kernel BTF: {e:#}"));
            None
        }
    }
}

/// 6.18's BTF cut down to what rstwatch reads (fixtures/vmlinux.min.bpf.c says how), so the
/// lookups are tested on every machine.
#[cfg(test)]
pub(crate) const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/src/load/kernel/fixtures/6.18/vmlinux.min.btf"
);

#[cfg(test)]
pub(crate) fn fixture() -> KernelBtf {
    KernelBtf::open(Path::new(FIXTURE)).expect("reading the BTF fixture")
}

#[cfg(test)]
mod tests;

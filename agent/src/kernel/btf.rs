//! Kernel struct offsets from BTF (`/sys/kernel/btf/vmlinux`), read at load
//! time. Rust eBPF has no CO-RE, so the programs that read kernel structs
//! (`exe.rs`) get the offsets they need as load-time globals, like the
//! tracefs offsets; a kernel without BTF fails with a clear error instead of
//! a program reading the wrong field.
//!
//! Only what offsets need is parsed: type records are walked to index them,
//! and struct/union members are searched by name, descending into anonymous
//! members (`inode.i_nlink` sits in an anonymous union).
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error(
        "reading kernel BTF at {path}: {source} (the kernel needs CONFIG_DEBUG_INFO_BTF for the \
         executable-file hook)"
    )]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("kernel BTF at {path} is malformed: {why}")]
    Malformed { path: PathBuf, why: &'static str },
    #[error("kernel BTF has no struct {0}")]
    NoStruct(String),
    #[error("kernel BTF: struct {strukt} has no member {member}")]
    NoMember { strukt: String, member: String },
}

pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

const MAGIC: u16 = 0xeb9f;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_TYPE_TAG: u32 = 18;

struct Type {
    name_off: u32,
    kind: u32,
    kind_flag: bool,
    size_or_type: u32,
    /// Byte range of the member records (struct/union only).
    members: std::ops::Range<usize>,
}

pub struct Btf {
    data: Vec<u8>,
    strings: std::ops::Range<usize>,
    /// Index = type id − 1.
    types: Vec<Type>,
}

impl Btf {
    pub fn read(path: &Path) -> Result<Btf, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Btf::parse(data).map_err(|why| BtfError::Malformed {
            path: path.to_path_buf(),
            why,
        })
    }

    fn parse(data: Vec<u8>) -> Result<Btf, &'static str> {
        let u32_at = |data: &[u8], at: usize| -> Result<u32, &'static str> {
            data.get(at..at + 4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .ok_or("truncated")
        };
        let magic = data.get(0..2).ok_or("truncated header")?;
        if u16::from_le_bytes([magic[0], magic[1]]) != MAGIC {
            return Err("bad magic (not little-endian BTF)");
        }
        let hdr_len = u32_at(&data, 4)? as usize;
        let type_off = u32_at(&data, 8)? as usize;
        let type_len = u32_at(&data, 12)? as usize;
        let str_off = u32_at(&data, 16)? as usize;
        let str_len = u32_at(&data, 20)? as usize;
        let types_start = hdr_len.checked_add(type_off).ok_or("overflow")?;
        let types_end = types_start.checked_add(type_len).ok_or("overflow")?;
        let str_start = hdr_len.checked_add(str_off).ok_or("overflow")?;
        let str_end = str_start.checked_add(str_len).ok_or("overflow")?;
        if types_end > data.len() || str_end > data.len() {
            return Err("sections outside the file");
        }
        let mut types = Vec::new();
        let mut at = types_start;
        while at < types_end {
            let name_off = u32_at(&data, at)?;
            let info = u32_at(&data, at + 4)?;
            let size_or_type = u32_at(&data, at + 8)?;
            at += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let extra = match kind {
                1 | 14 | 17 => 4,             // int, var, decl_tag
                3 => 12,                      // array
                4 | 5 | 15 | 19 => vlen * 12, // struct, union, datasec, enum64
                6 | 13 => vlen * 8,           // enum, func_proto
                2 | 7..=12 | 16 | 18 => 0,
                _ => return Err("unknown type kind"),
            };
            let members = at..at + extra;
            at += extra;
            if at > types_end {
                return Err("type record outside the type section");
            }
            types.push(Type {
                name_off,
                kind,
                kind_flag: info >> 31 != 0,
                size_or_type,
                members,
            });
        }
        Ok(Btf {
            data,
            strings: str_start..str_end,
            types,
        })
    }

    fn name(&self, off: u32) -> &[u8] {
        let strings = &self.data[self.strings.clone()];
        let rest = strings.get(off as usize..).unwrap_or_default();
        let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
        &rest[..end]
    }

    fn by_id(&self, id: u32) -> Option<&Type> {
        self.types.get((id as usize).checked_sub(1)?)
    }

    fn strukt(&self, name: &str) -> Result<&Type, BtfError> {
        self.types
            .iter()
            .find(|t| t.kind == KIND_STRUCT && self.name(t.name_off) == name.as_bytes())
            .ok_or_else(|| BtfError::NoStruct(name.to_owned()))
    }

    /// `sizeof(struct name)`.
    pub fn struct_size(&self, name: &str) -> Result<u32, BtfError> {
        Ok(self.strukt(name)?.size_or_type)
    }

    /// Byte offset of `member` in `struct strukt`.
    pub fn member_offset(&self, strukt: &str, member: &str) -> Result<u32, BtfError> {
        let ty = self.strukt(strukt)?;
        self.find_member(ty, member.as_bytes(), 0)
            .map(|bits| bits / 8)
            .ok_or_else(|| BtfError::NoMember {
                strukt: strukt.to_owned(),
                member: member.to_owned(),
            })
    }

    /// Bit offset of `member`, searching anonymous members too.
    fn find_member(&self, ty: &Type, member: &[u8], depth: u32) -> Option<u32> {
        if depth > 8 {
            return None;
        }
        for record in self.data[ty.members.clone()].chunks_exact(12) {
            let field = |i: usize| {
                u32::from_le_bytes([record[i], record[i + 1], record[i + 2], record[i + 3]])
            };
            let (name_off, type_id, raw_offset) = (field(0), field(4), field(8));
            // With kind_flag, the top 8 bits hold a bitfield size.
            let bits = if ty.kind_flag {
                raw_offset & 0x00ff_ffff
            } else {
                raw_offset
            };
            if name_off != 0 {
                if self.name(name_off) == member {
                    return Some(bits);
                }
                continue;
            }
            if let Some(inner) = self.resolve(type_id)
                && matches!(inner.kind, KIND_STRUCT | KIND_UNION)
                && let Some(found) = self.find_member(inner, member, depth + 1)
            {
                return Some(bits + found);
            }
        }
        None
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn resolve(&self, mut id: u32) -> Option<&Type> {
        for _ in 0..16 {
            let ty = self.by_id(id)?;
            match ty.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = ty.size_or_type;
                }
                _ => return Some(ty),
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_kernels_struct_offsets() {
        let Ok(btf) = Btf::read(Path::new(VMLINUX)) else {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI kernels have BTF at {VMLINUX}"
            );
            return;
        };
        // UAPI-stable facts to check the parser against.
        assert_eq!(btf.member_offset("sockaddr_in", "sin_port").unwrap(), 2);
        assert_eq!(btf.member_offset("sockaddr_in", "sin_addr").unwrap(), 4);
        assert_eq!(btf.struct_size("sockaddr_in6").unwrap(), 28);
        // In an anonymous union.
        let nlink = btf.member_offset("inode", "i_nlink").unwrap();
        assert_eq!(btf.member_offset("inode", "__i_nlink").unwrap(), nlink);
        assert!(btf.struct_size("inode").unwrap() > nlink);
        assert!(matches!(
            btf.member_offset("inode", "no_such_member"),
            Err(BtfError::NoMember { .. })
        ));
        assert!(matches!(
            btf.struct_size("no_such_struct"),
            Err(BtfError::NoStruct(_))
        ));
    }

    #[test]
    fn hostile_input_is_an_error_not_a_panic() {
        for bad in [
            &b""[..],
            b"\x9f\xeb",
            b"\x9f\xeb\x01\x00\x18\x00\x00\x00\x00\x00\x00\x00\xff\xff\xff\xff\x00\x00\x00\x00\x00\x00\x00\x00",
            b"\x00\x00\x01\x00\x18\x00\x00\x00",
        ] {
            assert!(Btf::parse(bad.to_vec()).is_err(), "{bad:?}");
        }
        // A type record claiming more members than the section holds.
        let mut data = vec![0x9f, 0xeb, 1, 0];
        data.extend_from_slice(&24u32.to_le_bytes());
        data.extend_from_slice(&0u32.to_le_bytes());
        data.extend_from_slice(&12u32.to_le_bytes());
        data.extend_from_slice(&12u32.to_le_bytes());
        data.extend_from_slice(&1u32.to_le_bytes());
        data.extend_from_slice(&0u32.to_le_bytes());
        data.extend_from_slice(&((4u32 << 24) | 100).to_le_bytes());
        data.extend_from_slice(&8u32.to_le_bytes());
        data.push(0);
        assert!(Btf::parse(data).is_err());
    }
}

//! Load-time input of the executable-file resolution
//! (`agent-ebpf/src/exe.rs`): kernel struct offsets from BTF. Without BTF,
//! or on a kernel whose verifier refuses the walk, the resolution is
//! switched off and the agent says so once:
//! `proc.exepath` then comes from the execve path (resolved through
//! `/proc/<pid>/exe` where needed) and the `proc.is_exe_*` flags are absent.
use std::path::Path;

use egret_common::ExeOffsets;

use super::btf::{Btf, BtfError, VMLINUX};

/// Why executables are not resolved in the kernel.
#[derive(Debug, thiserror::Error)]
pub enum ExeUnresolved {
    #[error("{0}")]
    Btf(#[from] BtfError),
    #[error("the kernel's verifier refused the executable-file walk: {0}")]
    Refused(String),
}

/// The offsets from this kernel's BTF, `valid` set.
pub fn offsets() -> Result<ExeOffsets, BtfError> {
    offsets_from(&Btf::read(Path::new(VMLINUX))?)
}

pub fn offsets_from(btf: &Btf) -> Result<ExeOffsets, BtfError> {
    let m = |s: &str, f: &str| btf.member_offset(s, f);
    Ok(ExeOffsets {
        valid: 1,
        task_mm: m("task_struct", "mm")?,
        task_fs: m("task_struct", "fs")?,
        mm_exe_file: m("mm_struct", "exe_file")?,
        fs_root: m("fs_struct", "root")?,
        file_f_path: m("file", "f_path")?,
        file_f_inode: m("file", "f_inode")?,
        path_mnt: m("path", "mnt")?,
        path_dentry: m("path", "dentry")?,
        dentry_d_parent: m("dentry", "d_parent")?,
        dentry_d_name: m("dentry", "d_name")?,
        qstr_len: m("qstr", "len")?,
        qstr_name: m("qstr", "name")?,
        vfsmount_mnt_root: m("vfsmount", "mnt_root")?,
        mount_mnt: m("mount", "mnt")?,
        mount_mnt_parent: m("mount", "mnt_parent")?,
        mount_mnt_mountpoint: m("mount", "mnt_mountpoint")?,
        inode_i_nlink: m("inode", "i_nlink")?,
        inode_i_sb: m("inode", "i_sb")?,
        inode_size: btf.struct_size("inode")?,
        sb_s_magic: m("super_block", "s_magic")?,
        _pad: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_of_this_kernel() {
        let found = offsets();
        if std::env::var_os("CI").is_some() {
            assert!(found.is_ok(), "CI kernels have BTF: {found:?}");
        }
        let Ok(o) = found else { return };
        assert_eq!(o.valid, 1);
        // struct path is { vfsmount *mnt; dentry *dentry }; qstr's name
        // follows its 8-byte hash_len union.
        assert_eq!((o.path_mnt, o.path_dentry), (0, 8));
        assert_eq!((o.qstr_len, o.qstr_name), (4, 8));
        assert!(o.inode_size > o.inode_i_nlink && o.inode_size > o.inode_i_sb);
        assert!(
            o.mount_mnt > 0,
            "struct mount embeds vfsmount after its hash links"
        );
    }
}

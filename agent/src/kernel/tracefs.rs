//! Tracefs: where tracepoint formats live. Egret reads field offsets from
//! the format files instead of compiling them in, because they change
//! between kernel versions (e.g. `sched_process_fork.parent_comm` became a
//! `__data_loc` string in 6.x).
use std::{
    ffi::CString,
    io,
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    #[error(
        "tracefs is not mounted and mounting it at {path} failed: {source} \
         (the kernel needs CONFIG_FTRACE; mount tracefs or run with CAP_SYS_ADMIN once)"
    )]
    Mount { path: PathBuf, source: io::Error },
    #[error("reading tracepoint format {path}: {source}")]
    Format { path: PathBuf, source: io::Error },
    #[error("tracepoints {first} and {second} no longer share one layout")]
    LayoutMismatch {
        first: &'static str,
        second: &'static str,
    },
    #[error("tracepoint {tracepoint} has no field {field}")]
    MissingField {
        tracepoint: String,
        field: &'static str,
    },
}

const CANDIDATES: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// The tracefs root, mounting tracefs at /sys/kernel/tracing if needed.
pub fn root() -> Result<PathBuf, TracefsError> {
    // The mount table, not a directory probe: tracefs is unreadable to an
    // unprivileged user, which must not be mistaken for "not mounted".
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    if let Some(found) = find_tracefs_mount(&mounts) {
        return Ok(found);
    }
    let target = Path::new(CANDIDATES[0]);
    mount(target).map_err(|source| TracefsError::Mount {
        path: target.to_path_buf(),
        source,
    })?;
    Ok(target.to_path_buf())
}

/// A mounted tracefs at one of the usual places (debugfs's `tracing`
/// directory is an automount of tracefs on current kernels).
fn find_tracefs_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (pre, post) = line.split_once(" - ")?;
        let fstype = post.split_whitespace().next()?;
        let point = pre.split_whitespace().nth(4)?;
        (fstype == "tracefs" && CANDIDATES.contains(&point)).then(|| PathBuf::from(point))
    })
}

fn mount(target: &Path) -> io::Result<()> {
    let c_target = CString::new(target.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            c"tracefs".as_ptr(),
            c_target.as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Field offsets of one tracepoint, parsed from its `format` file.
pub struct Format {
    name: String,
    fields: Vec<(String, u32)>,
}

impl Format {
    pub fn read(tracefs: &Path, category: &str, name: &str) -> Result<Format, TracefsError> {
        let path = tracefs
            .join("events")
            .join(category)
            .join(name)
            .join("format");
        let text = std::fs::read_to_string(&path)
            .map_err(|source| TracefsError::Format { path, source })?;
        Ok(Format::parse(&format!("{category}/{name}"), &text))
    }

    pub fn parse(name: &str, text: &str) -> Format {
        let fields = text
            .lines()
            .filter_map(|line| {
                // "\tfield:pid_t pid;\toffset:12;\tsize:4;\tsigned:1;"
                let mut parts = line.trim().split(';');
                let decl = parts.next()?.strip_prefix("field:")?;
                let field = decl.split_whitespace().last()?;
                let field = field.split('[').next()?.to_string();
                let offset = parts
                    .find_map(|p| p.trim().strip_prefix("offset:"))?
                    .parse()
                    .ok()?;
                Some((field, offset))
            })
            .collect();
        Format {
            name: name.to_string(),
            fields,
        }
    }

    pub fn offset(&self, field: &'static str) -> Option<u32> {
        self.fields
            .iter()
            .find(|(name, _)| name == field)
            .map(|(_, offset)| *offset)
    }

    pub fn require(&self, field: &'static str) -> Result<u32, TracefsError> {
        self.offset(field)
            .ok_or_else(|| TracefsError::MissingField {
                tracepoint: self.name.clone(),
                field,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORK: &str = "name: sched_process_fork
ID: 312
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:__data_loc char[] parent_comm;\toffset:8;\tsize:4;\tsigned:0;
\tfield:pid_t parent_pid;\toffset:12;\tsize:4;\tsigned:1;
\tfield:char child_comm[16];\toffset:16;\tsize:16;\tsigned:0;
\tfield:pid_t child_pid;\toffset:32;\tsize:4;\tsigned:1;

print fmt: \"comm=%s pid=%d\", __get_str(parent_comm), REC->parent_pid
";

    #[test]
    fn parses_offsets_including_arrays_and_data_loc() {
        let format = Format::parse("sched/sched_process_fork", FORK);
        assert_eq!(format.offset("parent_comm"), Some(8));
        assert_eq!(format.offset("child_comm"), Some(16));
        assert_eq!(format.offset("child_pid"), Some(32));
        assert_eq!(format.offset("nope"), None);
        assert!(
            format
                .require("nope")
                .unwrap_err()
                .to_string()
                .contains("sched_process_fork")
        );
    }

    #[test]
    fn finds_tracefs_in_mount_table() {
        let table = "40 22 0:12 / /sys/kernel/tracing rw - tracefs tracefs rw\n";
        assert_eq!(
            find_tracefs_mount(table),
            Some(PathBuf::from("/sys/kernel/tracing"))
        );
        assert_eq!(
            find_tracefs_mount("40 22 0:12 / /mnt rw - tracefs t rw\n"),
            None
        );
    }

    #[test]
    fn garbage_yields_no_fields() {
        let format = Format::parse("x/y", "field:\noffset:;;\n\u{0}\u{1}");
        assert_eq!(format.offset("field"), None);
    }
}

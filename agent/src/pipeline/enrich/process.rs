//! Process images: what program a process runs, keyed by the kernel
//! tracker's exec id rather than the pid, so a reused pid can never be
//! attributed to the previous owner's program. Forked children share their
//! parent's exec id (they run the same image until they exec).
use std::{
    collections::VecDeque,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use egret_common::{EXEC_ID_SEEDED, ProcState};

use super::FastMap;
use crate::pipeline::decode::ExecRecord;

/// What is known of the executable file's origin; `None`: unknown (no LSM
/// hook on this kernel, or learnt from `/proc`, which cannot tell layers).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExeOrigin {
    /// `proc.is_exe_from_memfd`.
    pub from_memfd: Option<bool>,
    /// `proc.is_exe_upper_layer`: in overlayfs's writable layer (written
    /// or changed after the container started, not from the image).
    pub upper_layer: Option<bool>,
    /// `proc.is_exe_lower_layer`: in overlayfs's image layers.
    pub lower_layer: Option<bool>,
    /// `proc.is_exe_deleted`: deleted after it was started (memfds count
    /// as `from_memfd` instead).
    pub deleted: Option<bool>,
}

impl ExeOrigin {
    fn from_kernel(exe: &crate::pipeline::decode::ExeFile) -> ExeOrigin {
        ExeOrigin {
            from_memfd: Some(exe.from_memfd()),
            upper_layer: Some(exe.on_overlay && exe.upper),
            lower_layer: Some(exe.on_overlay && !exe.upper),
            deleted: Some(exe.deleted()),
        }
    }

    /// From a `/proc/<pid>/exe` link: the kernel marks unlinked files, and
    /// names memfds `/memfd:<name>`; layers cannot be told from a path.
    fn from_proc_link(link: &str) -> ExeOrigin {
        let unlinked = link.ends_with(" (deleted)");
        let memfd = unlinked && link.starts_with("/memfd:");
        ExeOrigin {
            from_memfd: Some(memfd),
            upper_layer: None,
            lower_layer: None,
            deleted: Some(unlinked && !memfd),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct ProcessImage {
    /// `proc.exepath`: the executable file the kernel runs (from the LSM
    /// hook); without it, the execve path made absolute.
    pub exepath: Arc<str>,
    pub origin: ExeOrigin,
    /// `proc.name`: the task comm at exec time.
    pub name: Arc<str>,
    /// `proc.exe`: argv[0] as given (falls back to the path).
    pub exe: Arc<str>,
    /// `proc.args`: argv[1..] joined by spaces.
    pub args: Arc<str>,
    /// `proc.cmdline`: name followed by args, as Falco renders it.
    pub cmdline: Arc<str>,
    /// `user.loginuid` and `proc.tty`, read from /proc when the image is
    /// recorded (exec time, or the /proc fallback): both are inherited
    /// across fork and rarely change after exec. `None` if /proc was gone.
    pub session: Option<Session>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Session {
    /// The audit login uid (`u32::MAX`: unset).
    pub loginuid: u32,
    /// `tty_nr` of /proc/PID/stat: the controlling terminal's device
    /// number as Falco reports it; 0 without one.
    pub tty: u32,
}

impl Session {
    fn read(proc_dir: &Path) -> Option<Session> {
        let loginuid = std::fs::read_to_string(proc_dir.join("loginuid")).ok()?;
        let stat = std::fs::read_to_string(proc_dir.join("stat")).ok()?;
        Some(Session {
            loginuid: loginuid.trim().parse().ok()?,
            tty: stat_field(&stat, 4)?.parse().ok()?,
        })
    }
}

impl ProcessImage {
    fn new(exepath: String, name: String, argv: &[String]) -> ProcessImage {
        let exe = argv.first().cloned().unwrap_or_else(|| exepath.clone());
        let args = argv.get(1..).unwrap_or_default().join(" ");
        // Falco renders name + args; argv[0]'s basename is the name the
        // program was invoked as, which stays right for multi-call binaries
        // (busybox re-executes /proc/self/exe with argv[0] = the applet).
        let invoked = argv
            .first()
            .and_then(|arg0| arg0.rsplit('/').next())
            .filter(|base| !base.is_empty())
            .unwrap_or(&name);
        let cmdline = if args.is_empty() {
            invoked.to_string()
        } else {
            format!("{invoked} {args}")
        };
        ProcessImage {
            exepath: exepath.into(),
            origin: ExeOrigin::default(),
            name: name.into(),
            exe: exe.into(),
            args: args.into(),
            cmdline: cmdline.into(),
            session: None,
        }
    }
}

/// How long a /proc-derived answer for an untracked pid is reused: long
/// enough to absorb a connect storm, short enough to notice a reused pid.
const FALLBACK_TTL: Duration = Duration::from_secs(2);

pub struct ProcessCache {
    proc_root: PathBuf,
    cap: usize,
    images: FastMap<u64, Arc<ProcessImage>>,
    /// Insertion order for eviction (oldest first).
    order: VecDeque<u64>,
    /// tgid → exec id of its current image, for parent names.
    current: FastMap<u32, u64>,
    fallback: FastMap<u32, (Instant, Option<Arc<ProcessImage>>)>,
    /// When each image's executable was last checked for deletion.
    deletion_checked: FastMap<u64, Instant>,
    /// The current batch's clock ([`ProcessCache::begin_batch`]): one
    /// clock read per batch, not one per event for the TTL checks.
    now: Instant,
}

/// A binary deleted after it started (run, then `rm`: the usual way to
/// leave nothing behind) is only visible later, through `/proc/<pid>/exe`;
/// it is looked at no more often than this per image.
const DELETION_RECHECK: Duration = Duration::from_secs(1);

impl ProcessCache {
    pub fn new(proc_root: impl Into<PathBuf>, cap: usize) -> ProcessCache {
        ProcessCache {
            proc_root: proc_root.into(),
            cap: cap.max(16),
            images: FastMap::default(),
            order: VecDeque::new(),
            current: FastMap::default(),
            fallback: FastMap::default(),
            deletion_checked: FastMap::default(),
            now: Instant::now(),
        }
    }

    pub fn len(&self) -> usize {
        self.images.len()
    }

    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    /// Records a new image from the kernel's exec record.
    pub fn on_exec(&mut self, exec: &ExecRecord) {
        let proc_dir = self.proc_root.join(exec.tgid.to_string());
        let argv = match &exec.argv {
            Some(argv) => argv.clone(),
            // No argv capture on this kernel: the process is usually still
            // running the new image when its exec record arrives.
            None => read_cmdline(&proc_dir).unwrap_or_default(),
        };
        // The kernel's file wins: the execve string can be a symlink,
        // /proc/self/fd/N or a relative path (and argv[0] anything at all).
        let (exepath, origin) = match &exec.exe {
            Some(exe) if !exe.path.is_empty() => (exe.path.clone(), ExeOrigin::from_kernel(exe)),
            Some(exe) => (
                self.exepath_of(exec, &proc_dir),
                ExeOrigin::from_kernel(exe),
            ),
            None => (self.exepath_of(exec, &proc_dir), ExeOrigin::default()),
        };
        let mut image = ProcessImage::new(exepath, exec.comm.to_string_lossy().into_owned(), &argv);
        image.origin = origin;
        image.session = Session::read(&proc_dir);
        self.insert(exec.exec_id, Arc::new(image));
        self.current.insert(exec.tgid, exec.exec_id);
        self.fallback.remove(&exec.tgid);
    }

    /// The path as given to execve, made absolute where it was not. A
    /// `/proc/self/exe` re-exec runs the image the process had before the
    /// exec (its own, or its parent's if it had not exec'd since the fork).
    fn exepath_of(&self, exec: &ExecRecord, proc_dir: &Path) -> String {
        let given = &exec.filename;
        if given.starts_with('/') && !given.starts_with("/proc/") {
            return given.clone();
        }
        if given.starts_with("/proc/") {
            // Prefer the previous image's path over /proc/<pid>/exe: it is
            // known whether or not the process is still alive.
            let previous = [exec.tgid, exec.ppid]
                .iter()
                .filter_map(|pid| self.current.get(pid))
                .find_map(|id| self.images.get(id));
            if let Some(image) = previous {
                return image.exepath.to_string();
            }
        }
        match std::fs::read_link(proc_dir.join("exe")) {
            Ok(resolved) => resolved.to_string_lossy().into_owned(),
            Err(_) => given.clone(),
        }
    }

    /// Sets the clock the TTLs of the next lookups compare against.
    pub fn begin_batch(&mut self, now: Instant) {
        self.now = now;
    }

    /// The image of process `tgid` running exec `exec_id` (0: untracked).
    pub fn lookup(&mut self, tgid: u32, exec_id: u64) -> Option<Arc<ProcessImage>> {
        if exec_id != 0 {
            if let Some(image) = self.images.get(&exec_id).cloned() {
                return Some(self.recheck_deleted(tgid, exec_id, image));
            }
            // Evicted or never seen (exec record lost to a full ring
            // buffer): /proc still describes a live process.
            let image = self.read_proc(tgid).map(Arc::new)?;
            self.insert(exec_id, image.clone());
            return Some(image);
        }
        let now = self.now;
        if let Some((at, image)) = self.fallback.get(&tgid)
            && now.duration_since(*at) < FALLBACK_TTL
        {
            return image.clone();
        }
        let image = self.read_proc(tgid).map(Arc::new);
        if self.fallback.len() >= self.cap {
            self.fallback.clear();
        }
        self.fallback.insert(tgid, (now, image.clone()));
        image
    }

    /// Marks the image deleted when its file was removed since the exec.
    /// The link must name the image's own path (a container's as seen from
    /// the host ends with it), so a reused pid is never believed.
    fn recheck_deleted(
        &mut self,
        tgid: u32,
        exec_id: u64,
        image: Arc<ProcessImage>,
    ) -> Arc<ProcessImage> {
        if image.origin.deleted != Some(false) || image.exepath.is_empty() {
            return image;
        }
        let now = self.now;
        if self
            .deletion_checked
            .get(&exec_id)
            .is_some_and(|at| now.duration_since(*at) < DELETION_RECHECK)
        {
            return image;
        }
        if self.deletion_checked.len() >= self.cap {
            self.deletion_checked.clear();
        }
        self.deletion_checked.insert(exec_id, now);
        let Ok(link) = std::fs::read_link(self.proc_root.join(tgid.to_string()).join("exe")) else {
            return image;
        };
        let link = link.to_string_lossy();
        let same_file = link
            .strip_suffix(" (deleted)")
            .is_some_and(|path| path.ends_with(&*image.exepath));
        if !same_file {
            return image;
        }
        let updated = Arc::new(ProcessImage {
            exepath: format!("{} (deleted)", image.exepath).into(),
            origin: ExeOrigin {
                deleted: Some(true),
                ..image.origin
            },
            name: image.name.clone(),
            exe: image.exe.clone(),
            args: image.args.clone(),
            cmdline: image.cmdline.clone(),
            session: image.session,
        });
        self.images.insert(exec_id, updated.clone());
        updated
    }

    /// `proc.pname`: the name of the current image of `ppid`.
    pub fn name_of(&mut self, ppid: u32) -> Option<Arc<str>> {
        if ppid == 0 {
            return None;
        }
        let exec_id = self.current.get(&ppid).copied().unwrap_or(0);
        self.lookup(ppid, exec_id).map(|image| image.name.clone())
    }

    /// Scans /proc for processes that existed before the tracker attached:
    /// caches their images under synthetic exec ids and returns the kernel
    /// map entries to seed.
    pub fn seed_from_proc(&mut self) -> Vec<(u32, ProcState)> {
        let Ok(entries) = std::fs::read_dir(&self.proc_root) else {
            return Vec::new();
        };
        let mut seeded = Vec::new();
        for entry in entries.flatten() {
            let Some(tgid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let Some((ppid, start_ticks)) = read_stat(&entry.path()) else {
                continue;
            };
            let Some(image) = self.read_proc(tgid) else {
                continue;
            };
            // Unique per process: start time and pid together never repeat.
            let exec_id = EXEC_ID_SEEDED | (start_ticks << 22) | u64::from(tgid & 0x3f_ffff);
            self.insert(exec_id, Arc::new(image));
            self.current.insert(tgid, exec_id);
            seeded.push((
                tgid,
                ProcState {
                    exec_id,
                    ppid,
                    _pad: 0,
                },
            ));
        }
        seeded
    }

    fn insert(&mut self, exec_id: u64, image: Arc<ProcessImage>) {
        if self.images.insert(exec_id, image).is_none() {
            self.order.push_back(exec_id);
        }
        while self.images.len() > self.cap {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            self.images.remove(&oldest);
        }
        if self.current.len() > self.cap * 2 {
            let images = &self.images;
            self.current.retain(|_, id| images.contains_key(id));
        }
    }

    fn read_proc(&self, tgid: u32) -> Option<ProcessImage> {
        let dir = self.proc_root.join(tgid.to_string());
        let name = std::fs::read_to_string(dir.join("comm")).ok()?;
        let name = name.trim_end_matches('\n').to_string();
        let exepath = std::fs::read_link(dir.join("exe"))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let argv = read_cmdline(&dir).unwrap_or_default();
        let origin = if exepath.is_empty() {
            ExeOrigin::default()
        } else {
            ExeOrigin::from_proc_link(&exepath)
        };
        let mut image = ProcessImage::new(exepath, name, &argv);
        image.origin = origin;
        image.session = Session::read(&dir);
        Some(image)
    }
}

fn read_cmdline(proc_dir: &Path) -> Option<Vec<String>> {
    let raw = std::fs::read(proc_dir.join("cmdline")).ok()?;
    Some(
        raw.split(|b| *b == 0)
            .filter(|arg| !arg.is_empty())
            .map(|arg| String::from_utf8_lossy(arg).into_owned())
            .collect(),
    )
}

/// (ppid, start time in clock ticks) from /proc/<pid>/stat. The comm field
/// may contain spaces and parentheses, so parsing starts after the last ')'.
fn read_stat(proc_dir: &Path) -> Option<(u32, u64)> {
    let stat = std::fs::read_to_string(proc_dir.join("stat")).ok()?;
    // After the comm: state(0) ppid(1) … starttime(19).
    let ppid = stat_field(&stat, 1)?.parse().ok()?;
    let start = stat_field(&stat, 19)?.parse().ok()?;
    Some((ppid, start))
}

/// Field `index` after the comm of a /proc/PID/stat line: state(0) ppid(1)
/// pgrp(2) session(3) tty_nr(4) … The comm may contain spaces and
/// parentheses, so counting starts after the last ')'.
fn stat_field(stat: &str, index: usize) -> Option<&str> {
    stat.get(stat.rfind(')')? + 1..)?
        .split_whitespace()
        .nth(index)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::decode::Comm;

    fn exec(tgid: u32, exec_id: u64, argv: &[&str]) -> ExecRecord {
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"curl");
        ExecRecord {
            tgid,
            ppid: 1,
            uid: 0,
            gid: 0,
            exec_id,
            cgroup_id: 1,
            comm: Comm::from_raw(comm),
            filename: "/usr/bin/curl".into(),
            argv: Some(argv.iter().map(|s| s.to_string()).collect()),
            args_truncated: false,
            exe: None,
        }
    }

    #[test]
    fn image_fields_follow_falco() {
        let mut cache = ProcessCache::new("/nonexistent", 64);
        cache.on_exec(&exec(4242, 7, &["curl", "-s", "http://198.51.100.7/"]));
        let image = cache.lookup(4242, 7).expect("cached");
        assert_eq!(&*image.exepath, "/usr/bin/curl");
        assert_eq!(&*image.name, "curl");
        assert_eq!(&*image.exe, "curl");
        assert_eq!(&*image.args, "-s http://198.51.100.7/");
        assert_eq!(&*image.cmdline, "curl -s http://198.51.100.7/");
    }

    #[test]
    fn multi_call_binary_reexec_keeps_applet_name_and_real_path() {
        let mut cache = ProcessCache::new("/nonexistent", 64);
        let mut shell = exec(50, 1, &["sh", "-c", "nc x"]);
        shell.filename = "/bin/sh".into();
        cache.on_exec(&shell);
        let mut applet = exec(51, 2, &["nc", "-w1", "203.0.113.9", "80"]);
        applet.ppid = 50;
        applet.filename = "/proc/self/exe".into();
        let mut comm = [0u8; 16];
        comm[..3].copy_from_slice(b"exe");
        applet.comm = Comm::from_raw(comm);
        cache.on_exec(&applet);
        let image = cache.lookup(51, 2).expect("cached");
        assert_eq!(&*image.exepath, "/bin/sh", "the parent's image");
        assert_eq!(&*image.cmdline, "nc -w1 203.0.113.9 80");
    }

    #[test]
    fn the_kernels_executable_file_beats_the_execve_path() {
        use crate::pipeline::decode::ExeFile;
        let mut cache = ProcessCache::new("/nonexistent", 64);
        // Started as /proc/self/fd/3 (fexecve of a memfd), renamed by argv[0].
        let mut memfd = exec(60, 1, &["sshd", "-D"]);
        memfd.filename = "/proc/self/fd/3".into();
        memfd.exe = Some(ExeFile {
            path: "/memfd:payload (deleted)".into(),
            no_links: true,
            on_shmem: true,
            ..ExeFile::default()
        });
        cache.on_exec(&memfd);
        let image = cache.lookup(60, 1).unwrap();
        assert_eq!(&*image.exepath, "/memfd:payload (deleted)");
        assert_eq!(&*image.exe, "sshd");
        assert_eq!(image.origin.from_memfd, Some(true));
        assert_eq!(image.origin.deleted, Some(false));
        assert_eq!(image.origin.upper_layer, Some(false));

        let mut dropped = exec(61, 2, &["x"]);
        dropped.filename = "/usr/local/bin/link-to-x".into();
        dropped.exe = Some(ExeFile {
            path: "/tmp/x".into(),
            on_overlay: true,
            upper: true,
            ..ExeFile::default()
        });
        cache.on_exec(&dropped);
        let image = cache.lookup(61, 2).unwrap();
        assert_eq!(&*image.exepath, "/tmp/x");
        assert_eq!(
            (image.origin.upper_layer, image.origin.lower_layer),
            (Some(true), Some(false))
        );

        // Without the hook the flags are unknown, not false.
        cache.on_exec(&exec(62, 3, &["curl"]));
        let image = cache.lookup(62, 3).unwrap();
        assert_eq!(&*image.exepath, "/usr/bin/curl");
        assert_eq!(image.origin, ExeOrigin::default());
        assert_eq!(
            ExeOrigin::from_proc_link("/memfd:a (deleted)").from_memfd,
            Some(true)
        );
        assert_eq!(
            ExeOrigin::from_proc_link("/bin/a (deleted)").deleted,
            Some(true)
        );
        assert_eq!(ExeOrigin::from_proc_link("/bin/a").deleted, Some(false));
    }

    #[test]
    fn a_binary_deleted_after_it_started_is_flagged() {
        use crate::pipeline::decode::ExeFile;
        let dir = std::env::temp_dir().join(format!("egret-deleted-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let copy = dir.join("sleeper");
        std::fs::copy("/bin/sleep", &copy).unwrap();
        let mut child = std::process::Command::new(&copy).arg("5").spawn().unwrap();
        let path = std::fs::read_link(format!("/proc/{}/exe", child.id())).unwrap();
        let mut cache = ProcessCache::new("/proc", 64);
        let mut record = exec(child.id(), 9, &["sleeper", "5"]);
        record.exe = Some(ExeFile {
            path: path.to_string_lossy().into_owned(),
            ..ExeFile::default()
        });
        cache.on_exec(&record);
        let before = cache.lookup(child.id(), 9).unwrap();
        assert_eq!(before.origin.deleted, Some(false));
        std::fs::remove_file(&copy).unwrap();
        // Checked at most once a second per image.
        assert_eq!(
            cache.lookup(child.id(), 9).unwrap().origin.deleted,
            Some(false)
        );
        cache.deletion_checked.clear();
        let after = cache.lookup(child.id(), 9).unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(after.origin.deleted, Some(true));
        assert_eq!(&*after.exepath, format!("{} (deleted)", path.display()));
        assert_eq!(&*after.cmdline, "sleeper 5");
    }

    #[test]
    fn reused_pid_keeps_images_apart() {
        let mut cache = ProcessCache::new("/nonexistent", 64);
        cache.on_exec(&exec(100, 1, &["curl", "first"]));
        cache.on_exec(&exec(100, 2, &["curl", "second"]));
        assert_eq!(&*cache.lookup(100, 1).unwrap().args, "first");
        assert_eq!(&*cache.lookup(100, 2).unwrap().args, "second");
        // A forked child shares its parent's exec id.
        assert_eq!(&*cache.lookup(101, 2).unwrap().args, "second");
    }

    #[test]
    fn bounded_and_evicts_oldest() {
        let mut cache = ProcessCache::new("/nonexistent", 16);
        for id in 1..=100 {
            cache.on_exec(&exec(id as u32, id, &["x"]));
        }
        assert_eq!(cache.len(), 16);
        assert!(cache.lookup(1, 1).is_none(), "evicted and not in /proc");
        assert!(cache.lookup(100, 100).is_some());
    }

    #[test]
    fn proc_fallback_reads_this_process() {
        let mut cache = ProcessCache::new("/proc", 64);
        let me = std::process::id();
        let image = cache.lookup(me, 0).expect("own /proc entry");
        assert!(image.exepath.starts_with('/'));
        assert!(!image.cmdline.is_empty());
        let own_loginuid: u32 = std::fs::read_to_string("/proc/self/loginuid")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(image.session.unwrap().loginuid, own_loginuid);
        let seeded = cache.seed_from_proc();
        let mine = seeded
            .iter()
            .find(|(tgid, _)| *tgid == me)
            .expect("self seeded");
        assert!(mine.1.exec_id & EXEC_ID_SEEDED != 0);
        assert_eq!(mine.1.ppid, std::os::unix::process::parent_id());
    }

    #[test]
    fn stat_with_hostile_comm() {
        let dir = std::env::temp_dir().join(format!("egret-stat-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut line = String::from("77 (a) b) (c) S 12");
        for i in 0..18 {
            line.push_str(&format!(" {i}"));
        }
        std::fs::write(dir.join("stat"), line).unwrap();
        assert_eq!(read_stat(&dir), Some((12, 17)));
        assert_eq!(
            stat_field(&std::fs::read_to_string(dir.join("stat")).unwrap(), 4),
            Some("2")
        );
        std::fs::write(dir.join("stat"), "garbage").unwrap();
        assert_eq!(read_stat(&dir), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

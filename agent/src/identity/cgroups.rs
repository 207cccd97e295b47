//! cgroup id → cgroup path.
//!
//! The kernel reports `bpf_get_current_cgroup_id()`, which is the inode
//! number of the cgroup's directory in the cgroup v2 filesystem (kernfs ids
//! are 64-bit and never reused, so an id names one cgroup forever). We keep a
//! bounded inode → path map built by walking the tree, re-walk when an id is
//! missing (at most once per `min_rewalk_interval`), and try the event's
//! process's `/proc/<pid>/cgroup` first because it costs one file read rather
//! than a whole walk.
//!
//! On top of that, the kernel announces every v2 cgroup it creates (the
//! `cgroup_mkdir` tracepoint, `RecordKind::Cgroup`): [`CgroupPaths::on_mkdir`]
//! records the path before any process can run in the cgroup, so a cgroup
//! that lives a few milliseconds is named anyway. Announced entries survive
//! walks, and are forgotten `removed_grace` after their `cgroup_rmdir`
//! (events from inside a cgroup precede its removal in the ring buffer; the
//! grace covers consumers that resolve later).
use std::{
    collections::{HashMap, VecDeque},
    io,
    os::unix::fs::{DirEntryExt, MetadataExt},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use super::cgroup_path::{self, ContainerRef};

#[derive(Debug, thiserror::Error)]
pub enum CgroupPathsError {
    #[error("reading /proc/self/mountinfo: {0}")]
    MountInfo(#[source] io::Error),
    #[error("no cgroup2 filesystem is mounted")]
    NoCgroup2,
    #[error("walking the cgroup tree at {path}: {source}")]
    Walk { path: PathBuf, source: io::Error },
}

#[derive(Clone, Debug)]
pub struct CgroupPathsConfig {
    /// Entries kept at most; a walk stops adding past it.
    pub capacity: usize,
    /// Deeper directories are not walked (real trees are under 10 deep).
    pub max_depth: usize,
    /// Misses re-walk the tree at most this often.
    pub min_rewalk_interval: Duration,
    /// How long a removed cgroup's announced path is still served.
    pub removed_grace: Duration,
}

impl Default for CgroupPathsConfig {
    fn default() -> Self {
        CgroupPathsConfig {
            capacity: 65_536,
            max_depth: 32,
            min_rewalk_interval: Duration::from_secs(1),
            removed_grace: Duration::from_secs(30),
        }
    }
}

/// What a cgroup id resolved to: its path below the cgroup2 root, and the
/// container that path names, parsed once here rather than per event.
#[derive(Debug, PartialEq, Eq)]
pub struct CgroupEntry {
    /// Starts with `/`; the root cgroup is `/`.
    pub path: Box<str>,
    pub container: Option<ContainerRef>,
}

impl CgroupEntry {
    fn new(path: String) -> Arc<CgroupEntry> {
        let container = cgroup_path::parse(&path);
        Arc::new(CgroupEntry {
            path: path.into_boxed_str(),
            container,
        })
    }
}

#[derive(Debug, Default)]
pub struct CgroupStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    /// Misses answered from `/proc/<pid>/cgroup`.
    pub proc_fallbacks: AtomicU64,
    pub walks: AtomicU64,
    pub walk_errors: AtomicU64,
    /// Walks that stopped at `capacity`.
    pub truncated_walks: AtomicU64,
    /// Ids neither the fallback nor a walk could resolve.
    pub unresolved: AtomicU64,
    /// Entries dropped to make room for another (the map was full).
    pub evicted: AtomicU64,
}

/// What became of one kernel cgroup record
/// (`egret_cgroup_records_total{outcome}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CgroupRecordOutcome {
    /// A created cgroup's path is now known.
    Tracked,
    /// A removed cgroup's path will be forgotten after the grace.
    Removed,
    /// Not tracked: as many announced cgroups as `capacity` are live.
    DroppedFull,
    /// Not tracked: the path was cut short in the kernel or lies outside
    /// the cgroup2 mount this agent sees (then walks and /proc answer).
    PathUnusable,
}

impl CgroupRecordOutcome {
    pub const ALL: [CgroupRecordOutcome; 4] = [
        CgroupRecordOutcome::Tracked,
        CgroupRecordOutcome::Removed,
        CgroupRecordOutcome::DroppedFull,
        CgroupRecordOutcome::PathUnusable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CgroupRecordOutcome::Tracked => "tracked",
            CgroupRecordOutcome::Removed => "removed",
            CgroupRecordOutcome::DroppedFull => "dropped_full",
            CgroupRecordOutcome::PathUnusable => "path_unusable",
        }
    }
}

/// Cgroups the kernel announced: id → when to forget it (`None` while the
/// cgroup exists), plus the removal queue in deadline order.
#[derive(Default)]
struct Announced {
    ids: HashMap<u64, Option<Instant>>,
    removed: VecDeque<(Instant, u64)>,
}

/// Cgroup id → entry, read on every event. Seeded foldhash, as the
/// enricher's own maps (`FastMap`): SipHash here was a thirtieth of an
/// event's cost, and the keys are ids the kernel assigns.
type EntryMap = HashMap<u64, Arc<CgroupEntry>, foldhash::fast::RandomState>;

pub struct CgroupPaths {
    root: PathBuf,
    /// The mount's root inside the hierarchy (`/` unless this agent sees a
    /// cgroup namespace's subtree); kernel paths are relative to the
    /// hierarchy root and are stripped of it.
    mount_root: String,
    config: CgroupPathsConfig,
    announced: Mutex<Announced>,
    map: RwLock<EntryMap>,
    /// When the last walk started; a try_lock on it also keeps walks from
    /// running concurrently.
    last_walk: Mutex<Option<Instant>>,
    stats: CgroupStats,
}

impl CgroupPaths {
    /// A resolver for the cgroup2 hierarchy mounted at `root`. Pass the mount
    /// point, not a sub-cgroup the programs attach to: paths are parsed for
    /// container ids and must be complete.
    pub fn new(root: PathBuf, config: CgroupPathsConfig) -> CgroupPaths {
        CgroupPaths::with_mount_root(root, "/".to_owned(), config)
    }

    fn with_mount_root(root: PathBuf, mount_root: String, config: CgroupPathsConfig) -> Self {
        CgroupPaths {
            root,
            mount_root,
            config,
            announced: Mutex::new(Announced::default()),
            map: RwLock::new(EntryMap::default()),
            last_walk: Mutex::new(None),
            stats: CgroupStats::default(),
        }
    }

    /// A resolver for the first cgroup2 mount in this mount namespace. Unlike
    /// `kernel::cgroup::cgroup2_root` it never mounts one.
    pub fn from_mountinfo(config: CgroupPathsConfig) -> Result<CgroupPaths, CgroupPathsError> {
        let table =
            std::fs::read_to_string("/proc/self/mountinfo").map_err(CgroupPathsError::MountInfo)?;
        let root =
            crate::kernel::cgroup::find_cgroup2_mount(&table).ok_or(CgroupPathsError::NoCgroup2)?;
        let mount_root = cgroup2_mount_root(&table).unwrap_or_else(|| "/".to_owned());
        Ok(CgroupPaths::with_mount_root(root, mount_root, config))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn stats(&self) -> &CgroupStats {
        &self.stats
    }

    pub fn len(&self) -> usize {
        self.read_map().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The cached entry for `cgroup_id`; never does I/O.
    pub fn cached(&self, cgroup_id: u64) -> Option<Arc<CgroupEntry>> {
        self.read_map().get(&cgroup_id).cloned()
    }

    /// Resolves `cgroup_id`. On a miss, reads `/proc/<pid>/cgroup` of the
    /// process that triggered the event (if given and still alive), then
    /// re-walks the tree unless a walk ran within `min_rewalk_interval` or is
    /// running on another thread. A miss therefore costs at most one walk,
    /// and never waits for one.
    pub fn lookup(&self, cgroup_id: u64, pid: Option<u32>) -> Option<Arc<CgroupEntry>> {
        if let Some(entry) = self.cached(cgroup_id) {
            self.stats.hits.fetch_add(1, Ordering::Relaxed);
            return Some(entry);
        }
        self.stats.misses.fetch_add(1, Ordering::Relaxed);
        if let Some(entry) = pid.and_then(|pid| self.resolve_via_proc(cgroup_id, pid)) {
            self.stats.proc_fallbacks.fetch_add(1, Ordering::Relaxed);
            self.insert(cgroup_id, entry.clone());
            return Some(entry);
        }
        if self.rewalk_if_due()
            && let Some(entry) = self.cached(cgroup_id)
        {
            return Some(entry);
        }
        self.stats.unresolved.fetch_add(1, Ordering::Relaxed);
        None
    }

    /// Walks the whole tree now and replaces the map (dropping cgroups that
    /// no longer exist). Returns the number of entries.
    pub fn refresh(&self) -> Result<usize, CgroupPathsError> {
        let mut last = self.last_walk.lock().unwrap_or_else(|p| p.into_inner());
        *last = Some(Instant::now());
        self.walk_and_swap()
    }

    fn rewalk_if_due(&self) -> bool {
        let Ok(mut last) = self.last_walk.try_lock() else {
            return false;
        };
        if last.is_some_and(|at| at.elapsed() < self.config.min_rewalk_interval) {
            return false;
        }
        *last = Some(Instant::now());
        match self.walk_and_swap() {
            Ok(_) => true,
            Err(err) => {
                self.stats.walk_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%err, "cgroup walk failed");
                false
            }
        }
    }

    fn walk_and_swap(&self) -> Result<usize, CgroupPathsError> {
        self.stats.walks.fetch_add(1, Ordering::Relaxed);
        // The walk runs without the map lock so lookups keep being served.
        let mut fresh = self.walk()?;
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        // Announced cgroups stay: removed ones are still in their grace, and
        // one made during the walk may have been missed by it.
        let announced = self.announced();
        for id in announced.ids.keys() {
            if let Some(entry) = map.get(id)
                && !fresh.contains_key(id)
                && fresh.len() < self.config.capacity
            {
                fresh.insert(*id, entry.clone());
            }
        }
        drop(announced);
        let len = fresh.len();
        *map = fresh;
        Ok(len)
    }

    fn walk(&self) -> Result<EntryMap, CgroupPathsError> {
        let walk_err = |path: &Path, source| CgroupPathsError::Walk {
            path: path.to_path_buf(),
            source,
        };
        let root_ino = std::fs::metadata(&self.root)
            .map_err(|e| walk_err(&self.root, e))?
            .ino();
        let mut map = EntryMap::default();
        map.insert(root_ino, CgroupEntry::new("/".to_owned()));
        let mut stack = vec![(self.root.clone(), String::new(), 0usize)];
        while let Some((dir, rel, depth)) = stack.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                // Removed since we listed its parent: normal churn.
                Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                Err(err) if dir == self.root => return Err(walk_err(&dir, err)),
                Err(err) => {
                    tracing::debug!(dir = %dir.display(), %err, "skipping unreadable cgroup");
                    continue;
                }
            };
            for entry in entries.flatten() {
                // d_type from readdir: no stat per entry, and for kernfs the
                // readdir inode number is the cgroup id.
                if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                if map.len() >= self.config.capacity {
                    self.stats.truncated_walks.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        capacity = self.config.capacity,
                        "cgroup tree larger than the path cache; some cgroups stay unresolved"
                    );
                    return Ok(map);
                }
                let name = entry.file_name();
                let child_rel = format!("{rel}/{}", name.to_string_lossy());
                map.insert(entry.ino(), CgroupEntry::new(child_rel.clone()));
                if depth + 1 < self.config.max_depth {
                    stack.push((entry.path(), child_rel, depth + 1));
                }
            }
        }
        Ok(map)
    }

    /// The `0::<path>` line of `/proc/<pid>/cgroup`, accepted only if that
    /// directory's inode is `cgroup_id`: the process may have moved since
    /// the event, or its pid been reused.
    fn resolve_via_proc(&self, cgroup_id: u64, pid: u32) -> Option<Arc<CgroupEntry>> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        let path = unified_path(&text)?;
        let ino = std::fs::metadata(self.root.join(path.trim_start_matches('/')))
            .ok()?
            .ino();
        (ino == cgroup_id).then(|| CgroupEntry::new(path.to_owned()))
    }

    fn insert(&self, cgroup_id: u64, entry: Arc<CgroupEntry>) {
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        if map.len() >= self.config.capacity && !map.contains_key(&cgroup_id) {
            // Ids are never reused, so any victim is as good as another; the
            // next walk rebuilds the map from what exists anyway.
            if let Some(victim) = map.keys().next().copied() {
                map.remove(&victim);
                self.stats.evicted.fetch_add(1, Ordering::Relaxed);
            }
        }
        map.insert(cgroup_id, entry);
    }

    /// The kernel created cgroup `id` at `path` (from the hierarchy root).
    pub fn on_mkdir(&self, id: u64, path: Option<&str>) -> CgroupRecordOutcome {
        self.forget_expired(Instant::now());
        let Some(path) = path.and_then(|p| self.below_mount(p)) else {
            return CgroupRecordOutcome::PathUnusable;
        };
        let mut announced = self.announced();
        if announced.ids.len() >= self.config.capacity && !announced.ids.contains_key(&id) {
            return CgroupRecordOutcome::DroppedFull;
        }
        announced.ids.insert(id, None);
        drop(announced);
        self.insert(id, CgroupEntry::new(path));
        CgroupRecordOutcome::Tracked
    }

    /// The kernel removed cgroup `id`: keep its path for the grace period.
    /// `None` for a cgroup that was never announced (made before the agent
    /// started): walks drop those.
    pub fn on_rmdir(&self, id: u64) -> Option<CgroupRecordOutcome> {
        let now = Instant::now();
        self.forget_expired(now);
        let mut announced = self.announced();
        let deadline = announced.ids.get_mut(&id)?;
        if deadline.is_none() {
            let at = now + self.config.removed_grace;
            *deadline = Some(at);
            announced.removed.push_back((at, id));
        }
        Some(CgroupRecordOutcome::Removed)
    }

    /// Drops announced cgroups whose grace has passed.
    fn forget_expired(&self, now: Instant) {
        let mut announced = self.announced();
        let mut expired = Vec::new();
        while let Some(&(at, id)) = announced.removed.front() {
            if at > now {
                break;
            }
            announced.removed.pop_front();
            announced.ids.remove(&id);
            expired.push(id);
        }
        drop(announced);
        if !expired.is_empty() {
            let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
            for id in expired {
                map.remove(&id);
            }
        }
    }

    /// A hierarchy path as a path below our mount, if it is below it.
    fn below_mount(&self, path: &str) -> Option<String> {
        let root = self.mount_root.trim_end_matches('/');
        let rest = path.strip_prefix(root)?;
        if rest.is_empty() {
            return Some("/".to_owned());
        }
        rest.starts_with('/').then(|| rest.to_owned())
    }

    /// Announced cgroups being tracked (live or in their grace).
    pub fn announced_len(&self) -> usize {
        self.announced().ids.len()
    }

    fn announced(&self) -> std::sync::MutexGuard<'_, Announced> {
        self.announced.lock().unwrap_or_else(|p| p.into_inner())
    }

    #[cfg(test)]
    pub(crate) fn insert_for_test(&self, cgroup_id: u64, path: String) {
        self.insert(cgroup_id, CgroupEntry::new(path));
    }

    fn read_map(&self) -> std::sync::RwLockReadGuard<'_, EntryMap> {
        self.map.read().unwrap_or_else(|p| p.into_inner())
    }
}

/// The root (inside the hierarchy) of the first cgroup2 mount: the
/// mountinfo field before the mount point.
fn cgroup2_mount_root(mountinfo: &str) -> Option<String> {
    mountinfo.lines().find_map(|line| {
        let (pre, post) = line.split_once(" - ")?;
        if post.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let root = pre.split_whitespace().nth(3)?;
        root.starts_with('/').then(|| root.to_owned())
    })
}

/// The cgroup v2 path in a `/proc/<pid>/cgroup` file. Paths outside our
/// cgroup namespace show up as `/../..`; those cannot be resolved against
/// our mount and are rejected.
pub fn unified_path(proc_cgroup: &str) -> Option<&str> {
    let path = proc_cgroup
        .lines()
        .find_map(|line| line.strip_prefix("0::"))?;
    let escapes = path.split('/').any(|part| part == "..");
    (path.starts_with('/') && !escapes).then_some(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cgroup directory made for the test and removed however it ends.
    struct TestCgroup {
        path: PathBuf,
    }

    impl TestCgroup {
        fn create(root: &Path, name: &str) -> TestCgroup {
            let path = root.join(name);
            std::fs::create_dir(&path).expect("create test cgroup (needs root)");
            TestCgroup { path }
        }
    }

    impl Drop for TestCgroup {
        fn drop(&mut self) {
            if let Err(err) = std::fs::remove_dir(&self.path) {
                eprintln!("removing {}: {err}", self.path.display());
            }
        }
    }

    fn real_resolver(test: &str) -> Option<CgroupPaths> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            assert!(
                std::env::var_os("CI").is_none(),
                "{test} must run as root in CI"
            );
            eprintln!("skipping {test}: needs root to create cgroups");
            return None;
        }
        Some(CgroupPaths::from_mountinfo(CgroupPathsConfig::default()).expect("cgroup2 mount"))
    }

    #[test]
    fn parses_proc_cgroup() {
        let v1_and_v2 = "4:memory:/x\n1:cpu:/\n0::/kubepods/burstable/podx/abc\n";
        assert_eq!(
            unified_path(v1_and_v2),
            Some("/kubepods/burstable/podx/abc")
        );
        assert_eq!(unified_path("0::/\n"), Some("/"));
        assert_eq!(unified_path("0::/../../kubepods/x\n"), None);
        assert_eq!(unified_path("1:name=systemd:/\n"), None);
        assert_eq!(unified_path("0::relative\n"), None);
        assert_eq!(unified_path(""), None);
    }

    #[test]
    fn resolves_a_new_cgroup_by_walk_and_by_proc() {
        let Some(paths) = real_resolver("resolves_a_new_cgroup_by_walk_and_by_proc") else {
            return;
        };
        let name = format!("egret-idtest-{}", std::process::id());
        let guard = TestCgroup::create(paths.root(), &name);
        let child = TestCgroup::create(&guard.path, "default");
        let leaf = TestCgroup::create(&child.path, "mycontainer");
        let ino = std::fs::metadata(&leaf.path).unwrap().ino();

        // First miss walks the tree.
        let entry = paths.lookup(ino, None).expect("found by walk");
        assert_eq!(&*entry.path, format!("/{name}/default/mycontainer"));
        assert_eq!(paths.stats().walks.load(Ordering::Relaxed), 1);
        // Cached now; no further walk.
        assert_eq!(paths.lookup(ino, None), Some(entry));
        assert_eq!(paths.stats().walks.load(Ordering::Relaxed), 1);
        assert!(paths.cached(1).is_some() || paths.len() > 1);

        // A cgroup made after the walk, within the rate limit, is found
        // through /proc of a process inside it.
        let late = TestCgroup::create(&guard.path, "late");
        let late_ino = std::fs::metadata(&late.path).unwrap().ino();
        assert_eq!(paths.lookup(late_ino, None), None);
        let mut child_proc = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        std::fs::write(late.path.join("cgroup.procs"), child_proc.id().to_string()).unwrap();
        let found = paths.lookup(late_ino, Some(child_proc.id()));
        child_proc.kill().unwrap();
        child_proc.wait().unwrap();
        assert_eq!(
            found.expect("found via /proc").path,
            format!("/{name}/late").into()
        );
        assert_eq!(paths.stats().proc_fallbacks.load(Ordering::Relaxed), 1);
        // A pid in another cgroup must not be believed.
        assert_eq!(paths.lookup(u64::MAX, Some(std::process::id())), None);
        drop((leaf, child, late));
    }

    fn announcing(capacity: usize, grace: Duration) -> CgroupPaths {
        CgroupPaths::with_mount_root(
            "/nonexistent".into(),
            "/".into(),
            CgroupPathsConfig {
                capacity,
                removed_grace: grace,
                ..CgroupPathsConfig::default()
            },
        )
    }

    #[test]
    fn announced_cgroups_are_served_until_grace_after_removal() {
        let paths = announcing(16, Duration::from_millis(50));
        let outcome = paths.on_mkdir(10, Some("/kubepods/pod1/abc"));
        assert_eq!(outcome, CgroupRecordOutcome::Tracked);
        assert_eq!(&*paths.lookup(10, None).unwrap().path, "/kubepods/pod1/abc");
        assert_eq!(paths.on_rmdir(10), Some(CgroupRecordOutcome::Removed));
        // A repeat rmdir does not extend the grace.
        assert_eq!(paths.on_rmdir(10), Some(CgroupRecordOutcome::Removed));
        assert!(paths.cached(10).is_some(), "served during the grace");
        assert_eq!(paths.on_rmdir(99), None, "never announced");
        std::thread::sleep(Duration::from_millis(60));
        paths.on_mkdir(11, Some("/other"));
        assert_eq!(paths.cached(10), None, "forgotten after the grace");
        assert_eq!(paths.announced_len(), 1);
    }

    #[test]
    fn announcements_are_bounded_and_paths_checked() {
        let paths = announcing(2, Duration::from_secs(30));
        assert_eq!(paths.on_mkdir(1, Some("/a")), CgroupRecordOutcome::Tracked);
        assert_eq!(paths.on_mkdir(2, Some("/b")), CgroupRecordOutcome::Tracked);
        assert_eq!(
            paths.on_mkdir(3, Some("/c")),
            CgroupRecordOutcome::DroppedFull
        );
        assert_eq!(paths.cached(3), None);
        assert_eq!(paths.on_mkdir(4, None), CgroupRecordOutcome::PathUnusable);

        // In a cgroup namespace the mount shows a subtree of the hierarchy.
        let nested = CgroupPaths::with_mount_root(
            "/nonexistent".into(),
            "/kubepods/pod1".into(),
            CgroupPathsConfig::default(),
        );
        nested.on_mkdir(5, Some("/kubepods/pod1/abc"));
        assert_eq!(&*nested.cached(5).unwrap().path, "/abc");
        assert_eq!(
            nested.on_mkdir(6, Some("/kubepods/pod10/x")),
            CgroupRecordOutcome::PathUnusable
        );
        assert_eq!(
            nested.on_mkdir(7, Some("/system.slice")),
            CgroupRecordOutcome::PathUnusable
        );
    }

    #[test]
    fn mount_root_from_mountinfo() {
        let table = "\
26 25 0:23 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
31 25 0:28 /kubepods/pod1 /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw
";
        assert_eq!(cgroup2_mount_root(table).as_deref(), Some("/kubepods/pod1"));
        assert_eq!(cgroup2_mount_root("garbage\n"), None);
    }

    #[test]
    fn announced_cgroups_survive_a_walk() {
        let Some(paths) = real_resolver("announced_cgroups_survive_a_walk") else {
            return;
        };
        // Removed (id never reused), announced: the walk cannot see it.
        paths.on_mkdir(u64::MAX - 3, Some("/gone-already"));
        paths.on_rmdir(u64::MAX - 3);
        paths.refresh().unwrap();
        assert_eq!(
            &*paths.cached(u64::MAX - 3).expect("kept over the walk").path,
            "/gone-already"
        );
    }

    #[test]
    fn root_cgroup_and_bounded_map() {
        let Some(_) = real_resolver("root_cgroup_and_bounded_map") else {
            return;
        };
        let paths = CgroupPaths::from_mountinfo(CgroupPathsConfig {
            capacity: 2,
            ..CgroupPathsConfig::default()
        })
        .unwrap();
        let root_ino = std::fs::metadata(paths.root()).unwrap().ino();
        let guard =
            TestCgroup::create(paths.root(), &format!("egret-bound-{}", std::process::id()));
        let _a = TestCgroup::create(&guard.path, "a");
        let _b = TestCgroup::create(&guard.path, "b");
        assert!(paths.refresh().unwrap() <= 2);
        assert_eq!(paths.stats().truncated_walks.load(Ordering::Relaxed), 1);
        let root = paths.cached(root_ino).expect("root is walked first");
        assert_eq!((&*root.path, &root.container), ("/", &None));
    }
}

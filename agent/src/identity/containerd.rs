//! Container metadata from containerd over its gRPC socket.
//!
//! [`ContainerdMetadata`] is the read side the pipeline uses: cache lookups
//! that never wait on containerd. [`ContainerdWorker`] is the background
//! task that keeps the cache filled: it subscribes to containerd's event
//! stream (so a container is known before its first connection and dropped
//! after deletion), lists all containers on every (re)connect, serves cache
//! misses with bounded-time fetches, and reconnects with exponential backoff
//! whenever containerd is absent or restarting.
use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use containerd_client::{
    Client,
    events::{ContainerCreate, ContainerDelete, ContainerUpdate, TaskExit, TaskStart},
    services::v1::{Container, GetContainerRequest, ListContainersRequest, SubscribeRequest},
    tonic::{self, Code, metadata::AsciiMetadataValue, transport::Channel},
    types::Envelope,
};
use tokio::{sync::mpsc, task::JoinSet, time::timeout};
use tokio_util::sync::CancellationToken;

use super::{
    container_cache::{CacheConfig, ContainerCache, ContainerdStats, Lookup},
    metadata::{ContainerKind, ContainerMeta, SpecSummary, kind_of, sandbox_id},
};

/// Container specs and listings of busy nodes exceed tonic's 4 MiB default.
const MAX_MESSAGE_BYTES: usize = 64 << 20;
/// Events buffered between the stream and the worker.
const EVENT_QUEUE: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum ContainerdError {
    #[error("invalid containerd namespace {0:?}")]
    InvalidNamespace(String),
    #[error("connecting to containerd at {path}: {source}")]
    Connect {
        path: PathBuf,
        source: tonic::transport::Error,
    },
    #[error("containerd {call} failed: {status}")]
    Rpc {
        call: &'static str,
        status: Box<tonic::Status>,
    },
    #[error("containerd {call} timed out after {after:?}")]
    Timeout { call: &'static str, after: Duration },
    #[error("containerd closed the event stream")]
    StreamClosed,
}

#[derive(Clone, Debug)]
pub struct ContainerdConfig {
    pub socket: PathBuf,
    /// The namespace CRI containers live in (`k8s.io` for Kubernetes).
    pub namespace: String,
    pub cache: CacheConfig,
    /// Misses waiting for a fetch; beyond it lookups answer "overloaded".
    pub fetch_queue: usize,
    /// Fetches running at once for cache misses.
    pub max_inflight: usize,
    /// Every call to containerd gives up after this long.
    pub request_timeout: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// How long a deleted container's metadata is still served, for events
    /// queued behind its deletion.
    pub delete_grace: Duration,
    /// Full re-listing, to catch deletions whose event was missed.
    pub resync_interval: Duration,
    /// A file naming the host network namespace, for the host-network check
    /// of containers that join a namespace by path. The agent runs with
    /// hostNetwork, so its own namespace is the host's.
    pub host_netns_file: Option<PathBuf>,
}

impl Default for ContainerdConfig {
    fn default() -> Self {
        ContainerdConfig {
            socket: PathBuf::from("/run/containerd/containerd.sock"),
            namespace: "k8s.io".to_owned(),
            cache: CacheConfig::default(),
            fetch_queue: 1024,
            max_inflight: 8,
            request_timeout: Duration::from_secs(2),
            backoff_initial: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
            delete_grace: Duration::from_secs(30),
            resync_interval: Duration::from_secs(300),
            host_netns_file: Some(PathBuf::from("/proc/self/ns/net")),
        }
    }
}

/// The pipeline's handle: non-blocking metadata lookups by container id.
pub struct ContainerdMetadata {
    config: ContainerdConfig,
    namespace_header: AsciiMetadataValue,
    cache: ContainerCache,
    stats: Arc<ContainerdStats>,
}

impl ContainerdMetadata {
    /// The handle, and the worker that must be spawned for it to learn
    /// anything (`tokio::spawn(worker.run(shutdown))`).
    pub fn new(
        config: ContainerdConfig,
    ) -> Result<(Arc<ContainerdMetadata>, ContainerdWorker), ContainerdError> {
        let invalid = || ContainerdError::InvalidNamespace(config.namespace.clone());
        let valid = !config.namespace.is_empty()
            && config.namespace.len() <= 76
            && config
                .namespace
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !valid {
            return Err(invalid());
        }
        let namespace_header =
            AsciiMetadataValue::try_from(config.namespace.as_str()).map_err(|_| invalid())?;
        let stats = Arc::new(ContainerdStats::default());
        let (cache, fetch_rx) =
            ContainerCache::new(config.cache.clone(), config.fetch_queue, stats.clone());
        let shared = Arc::new(ContainerdMetadata {
            config,
            namespace_header,
            cache,
            stats,
        });
        let worker = ContainerdWorker {
            shared: shared.clone(),
            fetch_rx,
        };
        Ok((shared, worker))
    }

    /// Metadata for a container id, or why it is not known yet. A miss queues
    /// a fetch; ask again for a later event.
    pub fn lookup(&self, id: &str) -> Lookup {
        self.cache.get(id)
    }

    /// Known metadata only, without queuing anything.
    pub fn cached(&self, id: &str) -> Option<Arc<ContainerMeta>> {
        self.cache.peek(id)
    }

    pub fn namespace(&self) -> &str {
        &self.config.namespace
    }

    pub fn stats(&self) -> &ContainerdStats {
        &self.stats
    }

    pub fn is_connected(&self) -> bool {
        self.stats.connected.load(Ordering::Relaxed) == 1
    }

    #[cfg(test)]
    pub(crate) fn cache(&self) -> &ContainerCache {
        &self.cache
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request
            .metadata_mut()
            .insert("containerd-namespace", self.namespace_header.clone());
        request
    }
}

enum SessionEnd {
    Shutdown,
}

/// Keeps the cache in step with containerd; see the module docs.
pub struct ContainerdWorker {
    shared: Arc<ContainerdMetadata>,
    fetch_rx: mpsc::Receiver<Box<str>>,
}

type FetchResult = (Box<str>, Result<Option<ContainerMeta>, ContainerdError>);

impl ContainerdWorker {
    pub async fn run(mut self, shutdown: CancellationToken) {
        let config = self.shared.config.clone();
        let mut backoff = config.backoff_initial;
        let mut failures_in_a_row = 0u32;
        loop {
            let connects_before = self.shared.stats.connects.load(Ordering::Relaxed);
            match self.session(&shutdown).await {
                Ok(SessionEnd::Shutdown) => break,
                Err(err) => {
                    let was_connected =
                        self.shared.stats.connects.load(Ordering::Relaxed) > connects_before;
                    if was_connected {
                        self.shared
                            .stats
                            .stream_errors
                            .fetch_add(1, Ordering::Relaxed);
                        backoff = config.backoff_initial;
                        failures_in_a_row = 0;
                        tracing::warn!(%err, "lost containerd; reconnecting");
                    } else {
                        self.shared
                            .stats
                            .connect_failures
                            .fetch_add(1, Ordering::Relaxed);
                        failures_in_a_row += 1;
                        // Loud once, then quiet: containerd may simply not run here.
                        if failures_in_a_row == 1 {
                            tracing::warn!(%err, socket = %config.socket.display(), "containerd unreachable; container metadata unavailable until it is");
                        } else {
                            tracing::debug!(%err, "containerd still unreachable");
                        }
                    }
                }
            }
            self.shared.stats.connected.store(0, Ordering::Relaxed);
            self.shared.cache.fail_pending();
            if !self.back_off(backoff, &shutdown).await {
                break;
            }
            backoff = (backoff * 2).min(config.backoff_max);
        }
        self.shared.stats.connected.store(0, Ordering::Relaxed);
    }

    /// Waits `delay`, failing misses at once meanwhile (nobody can answer
    /// them) so they are retried later rather than left pending. False on
    /// shutdown.
    async fn back_off(&mut self, delay: Duration, shutdown: &CancellationToken) -> bool {
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return false,
                () = &mut sleep => return true,
                Some(id) = self.fetch_rx.recv() => self.shared.cache.mark_failed(&id),
                _ = tick.tick() => self.shared.cache.sweep(),
            }
        }
    }

    async fn session(
        &mut self,
        shutdown: &CancellationToken,
    ) -> Result<SessionEnd, ContainerdError> {
        let shared = self.shared.clone();
        let config = &shared.config;
        let channel = with_timeout("connect", config.request_timeout, async {
            containerd_client::connect(&config.socket)
                .await
                .map_err(|source| ContainerdError::Connect {
                    path: config.socket.clone(),
                    source,
                })
        })
        .await?;
        let client = Client::from(channel.clone());
        with_timeout("version", config.request_timeout, async {
            client.version().version(()).await.map_err(rpc("version"))
        })
        .await?;
        // containerd sends no response headers on the event stream until
        // the first event, so the subscription cannot be awaited here: a
        // task forwards it. It starts before the listing below, so a
        // container created meanwhile is normally both listed and
        // announced; one that slips through the gap is fetched on its first
        // lookup, and the periodic resync catches a missed deletion.
        let (event_tx, mut event_rx) = mpsc::channel(EVENT_QUEUE);
        let forwarder = AbortOnDrop(tokio::spawn(forward_events(
            Client::from(channel.clone()),
            event_tx,
        )));
        let listed = self.prime(&channel).await?;
        shared.stats.connects.fetch_add(1, Ordering::Relaxed);
        shared.stats.connected.store(1, Ordering::Relaxed);
        tracing::info!(socket = %config.socket.display(), namespace = %config.namespace, containers = listed, "connected to containerd");

        let mut inflight: JoinSet<FetchResult> = JoinSet::new();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut resync = tokio::time::interval(config.resync_interval);
        resync.reset();
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(SessionEnd::Shutdown),
                envelope = event_rx.recv() => match envelope {
                    Some(envelope) => self.on_event(envelope, &channel, &mut inflight),
                    None => return Err(forwarder.finish().await),
                },
                Some(done) = inflight.join_next(), if !inflight.is_empty() => {
                    if let Ok(result) = done {
                        self.apply(result);
                    }
                }
                Some(id) = self.fetch_rx.recv(), if inflight.len() < config.max_inflight => {
                    inflight.spawn(fetch(shared.clone(), channel.clone(), id));
                }
                _ = resync.tick() => {
                    self.prime(&channel).await?;
                }
                _ = tick.tick() => shared.cache.sweep(),
            }
        }
    }

    /// Lists every container in the namespace into the cache; containers
    /// the cache knew but containerd no longer has were deleted while we
    /// were away.
    async fn prime(&self, channel: &Channel) -> Result<usize, ContainerdError> {
        let shared = &self.shared;
        // Taken before listing: a container fetched while the listing is
        // under way is missing from it but not deleted.
        let known_before = shared.cache.known_ids();
        let containers = with_timeout("list", shared.config.request_timeout, async {
            containers_client(channel)
                .list(shared.request(ListContainersRequest::default()))
                .await
                .map_err(rpc("list"))
        })
        .await?
        .into_inner()
        .containers;
        // Each spec is parsed once; sandboxes go first so their containers
        // can take the pod labels from them.
        let parsed: Vec<(&Container, Option<SpecSummary>)> =
            containers.iter().map(|c| (c, spec_of(c))).collect();
        let is_sandbox = |(c, spec): &&(&Container, Option<SpecSummary>)| {
            kind_of(&c.labels, annotations(spec.as_ref())) == ContainerKind::Sandbox
        };
        let mut sandboxes: HashMap<&str, Arc<ContainerMeta>> = HashMap::new();
        for (container, spec) in parsed.iter().filter(is_sandbox) {
            let meta = Arc::new(build(shared, container, spec.as_ref(), None));
            sandboxes.insert(&container.id, meta.clone());
            shared.cache.insert(meta);
        }
        for (container, spec) in parsed.iter().filter(|p| !is_sandbox(p)) {
            let sandbox = sandbox_id(&container.labels, annotations(spec.as_ref()))
                .and_then(|sid| sandboxes.get(sid.as_str()));
            let meta = build(shared, container, spec.as_ref(), sandbox.map(|s| &**s));
            shared.cache.insert(Arc::new(meta));
        }
        let live: HashSet<&str> = containers.iter().map(|c| c.id.as_str()).collect();
        for gone in known_before.iter().filter(|id| !live.contains(&***id)) {
            shared.cache.mark_deleted(gone, shared.config.delete_grace);
        }
        Ok(containers.len())
    }

    fn on_event(&self, envelope: Envelope, channel: &Channel, inflight: &mut JoinSet<FetchResult>) {
        let shared = &self.shared;
        shared.stats.events.fetch_add(1, Ordering::Relaxed);
        if envelope.namespace != shared.config.namespace {
            return;
        }
        let Some(payload) = envelope.event else {
            return;
        };
        let bytes = payload.value.as_slice();
        let mut refresh = |id: String| {
            inflight.spawn(fetch(shared.clone(), channel.clone(), id.into()));
        };
        match envelope.topic.as_str() {
            "/containers/create" => decode::<ContainerCreate>(bytes).map(|e| refresh(e.id)),
            "/containers/update" => decode::<ContainerUpdate>(bytes).map(|e| refresh(e.id)),
            "/tasks/start" => decode::<TaskStart>(bytes).map(|e| {
                if !shared.cache.is_known(&e.container_id) {
                    refresh(e.container_id);
                }
            }),
            "/containers/delete" => decode::<ContainerDelete>(bytes)
                .map(|e| shared.cache.mark_deleted(&e.id, shared.config.delete_grace)),
            // Kept until the container record is deleted: events from the
            // last moments of a task may still be queued behind its exit.
            "/tasks/exit" => decode::<TaskExit>(bytes).map(|e| {
                tracing::trace!(container = %e.container_id, pid = e.pid, "task exited");
            }),
            _ => Some(()),
        };
    }

    fn apply(&self, (id, result): FetchResult) {
        let cache = &self.shared.cache;
        match result {
            Ok(Some(meta)) => cache.insert(Arc::new(meta)),
            Ok(None) => cache.mark_not_found(&id),
            Err(err) => {
                if matches!(err, ContainerdError::Timeout { .. }) {
                    self.shared
                        .stats
                        .fetch_timeouts
                        .fetch_add(1, Ordering::Relaxed);
                }
                tracing::debug!(container = %id, %err, "container metadata fetch failed");
                cache.mark_failed(&id);
            }
        }
    }
}

/// Pumps containerd's event stream into the worker; returns why it ended.
async fn forward_events(client: Client, tx: mpsc::Sender<Envelope>) -> ContainerdError {
    let mut stream = match client.events().subscribe(SubscribeRequest::default()).await {
        Ok(response) => response.into_inner(),
        Err(status) => return rpc("subscribe")(status),
    };
    loop {
        match stream.message().await {
            Ok(Some(envelope)) => {
                if tx.send(envelope).await.is_err() {
                    return ContainerdError::StreamClosed;
                }
            }
            Ok(None) => return ContainerdError::StreamClosed,
            Err(status) => return rpc("event stream")(status),
        }
    }
}

/// The forwarder dies with its session, however the session ends.
struct AbortOnDrop(tokio::task::JoinHandle<ContainerdError>);

impl AbortOnDrop {
    async fn finish(mut self) -> ContainerdError {
        (&mut self.0).await.unwrap_or(ContainerdError::StreamClosed)
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One container's metadata, with its pod sandbox's labels. `Ok(None)` when
/// containerd has no such container.
async fn fetch(shared: Arc<ContainerdMetadata>, channel: Channel, id: Box<str>) -> FetchResult {
    shared.stats.fetches.fetch_add(1, Ordering::Relaxed);
    let result = async {
        let Some(container) = get(&shared, &channel, &id).await? else {
            return Ok(None);
        };
        let spec = spec_of(&container);
        let sandbox_ref = sandbox_id(&container.labels, annotations(spec.as_ref()));
        let sandbox = match sandbox_ref.filter(|sid| sid.as_str() != &*id) {
            None => None,
            Some(sid) => match shared.cache.peek(&sid) {
                Some(known) => Some(known),
                None => fetch_sandbox(&shared, &channel, &sid).await,
            },
        };
        Ok(Some(build(
            &shared,
            &container,
            spec.as_ref(),
            sandbox.as_deref(),
        )))
    }
    .await;
    (id, result)
}

/// A sandbox for its pod labels; failing that, the container is still
/// described, just without them.
async fn fetch_sandbox(
    shared: &ContainerdMetadata,
    channel: &Channel,
    sandbox_id: &str,
) -> Option<Arc<ContainerMeta>> {
    match get(shared, channel, sandbox_id).await {
        Ok(Some(record)) => {
            let meta = Arc::new(build(shared, &record, spec_of(&record).as_ref(), None));
            shared.cache.insert(meta.clone());
            Some(meta)
        }
        Ok(None) => None,
        Err(err) => {
            shared.stats.fetch_failures.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(sandbox = sandbox_id, %err, "pod sandbox fetch failed");
            None
        }
    }
}

async fn get(
    shared: &ContainerdMetadata,
    channel: &Channel,
    id: &str,
) -> Result<Option<Container>, ContainerdError> {
    let request = shared.request(GetContainerRequest { id: id.to_owned() });
    with_timeout("get", shared.config.request_timeout, async {
        match containers_client(channel).get(request).await {
            Ok(response) => Ok(response.into_inner().container),
            Err(status) if status.code() == Code::NotFound => Ok(None),
            Err(status) => Err(rpc("get")(status)),
        }
    })
    .await
}

fn build(
    shared: &ContainerdMetadata,
    container: &Container,
    spec: Option<&SpecSummary>,
    sandbox: Option<&ContainerMeta>,
) -> ContainerMeta {
    ContainerMeta::from_record(
        &container.id,
        &container.labels,
        &container.image,
        spec,
        sandbox,
        shared.config.host_netns_file.as_deref(),
    )
}

fn annotations(spec: Option<&SpecSummary>) -> &HashMap<String, String> {
    static EMPTY: std::sync::LazyLock<HashMap<String, String>> =
        std::sync::LazyLock::new(HashMap::new);
    spec.map_or(&EMPTY, |s| &s.annotations)
}

fn spec_of(container: &Container) -> Option<SpecSummary> {
    let any = container.spec.as_ref()?;
    match SpecSummary::from_json(&any.value) {
        Ok(spec) => Some(spec),
        Err(err) => {
            tracing::debug!(container = %container.id, %err, "unreadable OCI spec");
            None
        }
    }
}

fn containers_client(
    channel: &Channel,
) -> containerd_client::services::v1::containers_client::ContainersClient<Channel> {
    containerd_client::services::v1::containers_client::ContainersClient::new(channel.clone())
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
}

fn decode<M: prost::Message + Default>(bytes: &[u8]) -> Option<M> {
    match M::decode(bytes) {
        Ok(message) => Some(message),
        Err(err) => {
            tracing::debug!(%err, "undecodable containerd event");
            None
        }
    }
}

fn rpc(call: &'static str) -> impl Fn(tonic::Status) -> ContainerdError {
    move |status| ContainerdError::Rpc {
        call,
        status: Box::new(status),
    }
}

async fn with_timeout<T>(
    call: &'static str,
    after: Duration,
    work: impl Future<Output = Result<T, ContainerdError>>,
) -> Result<T, ContainerdError> {
    timeout(after, work)
        .await
        .map_err(|_| ContainerdError::Timeout { call, after })?
}

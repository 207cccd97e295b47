//! An owned [`Event`] for tests, benches and fuzzing (feature `test-util`).
use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::{Event, FieldId, Value};

pub use crate::extra::OwnedValue;

impl From<&str> for OwnedValue {
    fn from(v: &str) -> Self {
        OwnedValue::Str(v.to_string())
    }
}

impl From<String> for OwnedValue {
    fn from(v: String) -> Self {
        OwnedValue::Str(v)
    }
}

impl From<u64> for OwnedValue {
    fn from(v: u64) -> Self {
        OwnedValue::U64(v)
    }
}

impl From<i64> for OwnedValue {
    fn from(v: i64) -> Self {
        OwnedValue::I64(v)
    }
}

impl From<IpAddr> for OwnedValue {
    fn from(v: IpAddr) -> Self {
        OwnedValue::Ip(v)
    }
}

impl From<bool> for OwnedValue {
    fn from(v: bool) -> Self {
        OwnedValue::Bool(v)
    }
}

/// An event built field by field. Every field starts missing; the
/// constructors fill what the kernel hooks always report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestEvent {
    values: Vec<OwnedValue>,
}

impl Default for TestEvent {
    fn default() -> Self {
        TestEvent {
            values: vec![OwnedValue::Missing; FieldId::COUNT],
        }
    }
}

impl TestEvent {
    /// A host process (`container.id = host`) connecting over TCP.
    pub fn connect(dest: IpAddr, port: u16) -> Self {
        Self::hooked(dest, port, "connect", "tcp", "connect")
    }

    /// A host process sending an unconnected UDP datagram.
    pub fn udp_send(dest: IpAddr, port: u16) -> Self {
        Self::hooked(dest, port, "sendto", "udp", "sendmsg")
    }

    fn hooked(dest: IpAddr, port: u16, evt_type: &str, proto: &str, hook: &str) -> Self {
        let family = if dest.to_canonical().is_ipv4() {
            "4"
        } else {
            "6"
        };
        let name = match dest {
            IpAddr::V4(_) => format!("{dest}:{port}"),
            IpAddr::V6(_) => format!("[{dest}]:{port}"),
        };
        TestEvent::default()
            .with(FieldId::EvtType, evt_type)
            .with(FieldId::EvtTime, 1_700_000_000_123_456_789u64)
            .with(FieldId::Hook, format!("{hook}{family}"))
            .with(FieldId::ServerIp, dest)
            .with(FieldId::ServerPort, u64::from(port))
            .with(FieldId::L4Proto, proto)
            .with(FieldId::FdName, name)
            .with(FieldId::Pid, 4242u64)
            .with(FieldId::Tid, 4242u64)
            .with(FieldId::Ppid, 1u64)
            .with(FieldId::ProcName, "curl")
            .with(FieldId::ProcExepath, "/usr/bin/curl")
            .with(FieldId::ProcExe, "curl")
            .with(FieldId::ProcCmdline, "curl https://example.com")
            .with(FieldId::ProcArgs, "https://example.com")
            .with(FieldId::ProcPname, "bash")
            .with(FieldId::Uid, 0u64)
            .with(FieldId::Gid, 0u64)
            .with(FieldId::UserName, "root")
            .with(FieldId::ContainerId, "host")
            .with(FieldId::ContainerHostNetwork, true)
            .with(FieldId::V4Mapped, false)
            .with(FieldId::CgroupId, 1u64)
            .with(FieldId::NetnsCookie, 4096u64)
    }

    /// Moves the process into a pod's container on the pod network.
    pub fn in_pod(self, namespace: &str, pod: &str, image: &str) -> Self {
        let (repository, tag) = image.rsplit_once(':').unwrap_or((image, "latest"));
        self.with(FieldId::ContainerId, "0123456789ab")
            .with(FieldId::ContainerName, pod)
            .with(FieldId::ContainerImage, image)
            .with(FieldId::ContainerImageRepository, repository)
            .with(FieldId::ContainerImageTag, tag)
            .with(FieldId::ContainerHostNetwork, false)
            .with(FieldId::K8sNsName, namespace)
            .with(FieldId::K8sPodName, pod)
            .with(FieldId::K8sPodUid, "5f0c1a2e-0000-4000-8000-000000000001")
            .with(FieldId::NetnsCookie, 8192u64)
    }

    pub fn with(mut self, field: FieldId, value: impl Into<OwnedValue>) -> Self {
        self.set(field, value);
        self
    }

    pub fn set(&mut self, field: FieldId, value: impl Into<OwnedValue>) -> &mut Self {
        if let Some(slot) = self.values.get_mut(field.index()) {
            *slot = value.into();
        }
        self
    }

    pub fn without(self, field: FieldId) -> Self {
        self.with(field, OwnedValue::Missing)
    }

    pub fn with_label(mut self, key: &str, value: &str) -> Self {
        let slot = self.values.get_mut(FieldId::K8sPodLabels.index());
        if let Some(slot) = slot {
            if !matches!(slot, OwnedValue::Labels(_)) {
                *slot = OwnedValue::Labels(BTreeMap::new());
            }
            if let OwnedValue::Labels(map) = slot {
                map.insert(key.to_string(), value.to_string());
            }
        }
        self
    }
}

impl Event for TestEvent {
    fn value(&self, field: FieldId) -> Value<'_> {
        self.values
            .get(field.index())
            .map_or(Value::Missing, OwnedValue::as_value)
    }
}

//! Enrich stage: keeps identity state current from the kernel's lifecycle
//! records and attaches it to each egress attempt. Records arrive in ring
//! buffer order, so an exec is always applied before the connects it made.
pub mod process;

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::event::{EgressAttempt, Record};
use process::{ProcessCache, ProcessImage};

/// An egress attempt with everything known about who made it.
#[derive(Clone, Debug)]
pub struct Event {
    pub attempt: EgressAttempt,
    pub process: Option<Arc<ProcessImage>>,
    /// `proc.pname`.
    pub parent_name: Option<Arc<str>>,
}

pub struct Enricher {
    pub processes: ProcessCache,
}

impl Enricher {
    pub fn new(processes: ProcessCache) -> Enricher {
        Enricher { processes }
    }

    /// Applies lifecycle records and enriches egress ones, in order.
    pub fn process_batch(&mut self, records: Vec<Record>, out: &mut Vec<Event>) {
        for record in records {
            match record {
                Record::Exec(exec) => self.processes.on_exec(&exec),
                Record::Egress(attempt) => out.push(self.enrich(attempt)),
            }
        }
    }

    fn enrich(&mut self, attempt: EgressAttempt) -> Event {
        let process = self.processes.lookup(attempt.tgid, attempt.exec_id);
        let parent_name = self.processes.name_of(attempt.ppid);
        Event {
            attempt,
            process,
            parent_name,
        }
    }
}

pub async fn run(
    mut enricher: Enricher,
    mut rx: mpsc::Receiver<Vec<Record>>,
    tx: mpsc::Sender<Vec<Event>>,
) {
    while let Some(records) = rx.recv().await {
        let mut events = Vec::with_capacity(records.len());
        enricher.process_batch(records, &mut events);
        if !events.is_empty() && tx.send(events).await.is_err() {
            break;
        }
    }
}

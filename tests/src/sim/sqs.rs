//! A simulated SQS queue, FIFO or standard, with the semantics reseq relies on: at-least-
//! once delivery, visibility timeouts, receipt handles (only the latest deletes),
//! `ApproximateReceiveCount`, the redrive to a DLQ after `maxReceiveCount` receives, FIFO
//! groups (one batch in flight per group, in order) and, on a standard queue, reordering
//! and duplicate deliveries.

use rand::Rng;
use rand::rngs::SmallRng;
use reseq_core::{Attributes, Millis, RawMessage};

#[derive(Clone, Debug)]
pub struct SqsMessage {
    pub id: String,
    pub body: bytes::Bytes,
    pub attributes: Attributes,
    pub group: Option<String>,
    pub receive_count: u32,
    pub visible_at: Millis,
    /// The receipt handle of the latest receive: only it deletes.
    pub receipt: u64,
}

/// A received message: what a worker gets from `ReceiveMessage`.
#[derive(Clone, Debug)]
pub struct Received {
    pub raw: RawMessage,
    pub receipt: u64,
    pub index: usize,
}

pub struct Queue {
    pub fifo: bool,
    pub visibility_ms: u64,
    pub max_receive_count: u32,
    pub messages: Vec<Option<SqsMessage>>,
    /// What the redrive moved out: invalid messages only, if reseq is right.
    pub dlq: Vec<SqsMessage>,
    next_receipt: u64,
}

impl Queue {
    pub fn new(fifo: bool, visibility_ms: u64, max_receive_count: u32) -> Queue {
        Queue {
            fifo,
            visibility_ms,
            max_receive_count,
            messages: Vec::new(),
            dlq: Vec::new(),
            next_receipt: 1,
        }
    }

    pub fn send(&mut self, id: String, body: bytes::Bytes, attributes: Attributes, group: Option<String>) {
        self.messages.push(Some(SqsMessage {
            id,
            body,
            attributes,
            group,
            receive_count: 0,
            visible_at: Millis(0),
            receipt: 0,
        }));
    }

    /// Messages not deleted and not redriven.
    pub fn remaining(&self) -> usize {
        self.messages.iter().flatten().count()
    }

    /// Up to 10 visible messages, in queue order per FIFO group (a group with a message in
    /// flight is skipped), or anywhere on a standard queue, sometimes delivering one that is
    /// in flight again (SQS's at-least-once).
    pub fn receive(&mut self, now: Millis, rng: &mut SmallRng) -> Vec<Received> {
        let mut blocked_groups: Vec<String> = Vec::new();
        if self.fifo {
            for m in self.messages.iter().flatten() {
                if m.visible_at > now
                    && let Some(g) = &m.group
                    && !blocked_groups.contains(g)
                {
                    blocked_groups.push(g.clone());
                }
            }
        }
        let mut candidates: Vec<usize> = Vec::new();
        for (i, slot) in self.messages.iter().enumerate() {
            let Some(m) = slot else { continue };
            let visible = m.visible_at <= now;
            let duplicate = !self.fifo && !visible && rng.random_ratio(1, 200);
            if !(visible || duplicate) {
                continue;
            }
            if self.fifo {
                let g = m.group.clone().unwrap_or_default();
                if blocked_groups.contains(&g) {
                    continue;
                }
                // Later messages of a group wait behind its first visible one only if that
                // one is not taken now; taking several in order is allowed.
            }
            candidates.push(i);
        }
        if !self.fifo {
            // A standard queue reorders.
            for i in (1..candidates.len()).rev() {
                let j = rng.random_range(0..=i);
                candidates.swap(i, j);
            }
        }
        let mut out = Vec::new();
        for i in candidates {
            if out.len() == 10 {
                break;
            }
            let Some(m) = self.messages[i].as_mut() else { continue };
            m.receive_count += 1;
            if m.receive_count > self.max_receive_count {
                // The redrive policy: this receive moves it to the DLQ instead.
                let moved = self.messages[i].take().expect("present");
                if let Some(g) = &moved.group {
                    // The group's later messages must not overtake it in this batch.
                    blocked_groups.push(g.clone());
                }
                self.dlq.push(moved);
                continue;
            }
            if self.fifo
                && let Some(g) = &m.group
                && blocked_groups.contains(g)
            {
                m.receive_count -= 1;
                continue;
            }
            m.visible_at = now.plus(reseq_core::Duration::from_millis(self.visibility_ms));
            m.receipt = self.next_receipt;
            self.next_receipt += 1;
            out.push(Received {
                raw: RawMessage {
                    message_id: m.id.clone(),
                    body: m.body.clone(),
                    attributes: m.attributes.clone(),
                    group_id: m.group.clone(),
                    received_at: now,
                    receive_count: m.receive_count,
                },
                receipt: m.receipt,
                index: i,
            });
        }
        out
    }

    /// Deletes with a receipt handle; an outdated handle deletes nothing (as SQS may).
    pub fn delete(&mut self, index: usize, receipt: u64) -> Option<SqsMessage> {
        match &self.messages[index] {
            Some(m) if m.receipt == receipt => self.messages[index].take(),
            _ => None,
        }
    }

    pub fn change_visibility(&mut self, index: usize, receipt: u64, now: Millis, ms: u64) {
        if let Some(m) = self.messages[index].as_mut()
            && m.receipt == receipt
        {
            m.visible_at = now.plus(reseq_core::Duration::from_millis(ms));
        }
    }
}

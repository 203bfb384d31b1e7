//! Generated traffic for the demo and the benchmark: per-context sequences shuffled within
//! a window, some positions duplicated, some missing, some arriving after everything else.

use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

#[derive(Clone, Debug)]
pub struct TrafficSpec {
    pub contexts: usize,
    pub messages: usize,
    /// Each context's positions are shuffled in blocks of this many.
    pub window: usize,
    /// Fraction of messages sent twice.
    pub duplicates: f64,
    /// Fraction of positions never sent (the last position of a context is always sent).
    pub missing: f64,
    /// Fraction of the missing positions that are sent after all other traffic (late).
    pub late: f64,
    pub seed: u64,
}

/// One message of the generated stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Msg {
    pub context: u32,
    pub seq: u64,
}

pub struct Traffic {
    pub stream: Vec<Msg>,
    /// Messages that arrive after the stream, once their gaps were skipped.
    pub stragglers: Vec<Msg>,
    /// Per context: its highest position.
    pub last_seq: Vec<u64>,
    /// Per context: positions that are never sent on time (missing or straggling).
    pub absent: Vec<Vec<u64>>,
}

pub fn context_id(context: u32) -> String {
    format!("ctx-{context:06}")
}

pub fn json_line(m: Msg) -> String {
    format!(
        r#"{{"contextId":"{}","sequence":{},"payload":"message {} of {}"}}"#,
        context_id(m.context),
        m.seq,
        m.seq,
        context_id(m.context)
    )
}

impl TrafficSpec {
    pub fn generate(&self) -> Traffic {
        let mut rng = SmallRng::seed_from_u64(self.seed);
        let contexts = self.contexts.max(1);
        let per_context = (self.messages / contexts).max(1) as u64;
        let window = self.window.max(1);
        let mut orders: Vec<Vec<u64>> = Vec::with_capacity(contexts);
        let mut absent = vec![Vec::new(); contexts];
        let mut stragglers = Vec::new();
        for (c, gone) in absent.iter_mut().enumerate() {
            let mut seqs: Vec<u64> = Vec::with_capacity(per_context as usize);
            for seq in 1..=per_context {
                if seq != per_context && rng.random::<f64>() < self.missing {
                    gone.push(seq);
                    if rng.random::<f64>() < self.late {
                        stragglers.push(Msg { context: c as u32, seq });
                    }
                } else {
                    seqs.push(seq);
                }
            }
            for block in seqs.chunks_mut(window) {
                block.shuffle(&mut rng);
            }
            seqs.reverse();
            orders.push(seqs);
        }
        // A random interleaving of the contexts: shuffle the multiset of context slots,
        // then give each slot its context's next position.
        let mut slots: Vec<u32> = orders
            .iter()
            .enumerate()
            .flat_map(|(c, o)| std::iter::repeat_n(c as u32, o.len()))
            .collect();
        slots.shuffle(&mut rng);
        let mut stream = Vec::with_capacity(slots.len() + (slots.len() as f64 * self.duplicates) as usize + 1);
        let mut copies: Vec<(usize, Msg)> = Vec::new();
        for (i, context) in slots.into_iter().enumerate() {
            let seq = orders[context as usize].pop().unwrap_or(1);
            let msg = Msg { context, seq };
            stream.push(msg);
            if rng.random::<f64>() < self.duplicates {
                copies.push((i + rng.random_range(1..=window * 4), msg));
            }
        }
        copies.sort_by_key(|(at, _)| *at);
        let mut with_copies = Vec::with_capacity(stream.len() + copies.len());
        let mut copies = copies.into_iter().peekable();
        for (i, msg) in stream.into_iter().enumerate() {
            with_copies.push(msg);
            while copies.peek().is_some_and(|(at, _)| *at == i) {
                with_copies.extend(copies.next().map(|(_, m)| m));
            }
        }
        with_copies.extend(copies.map(|(_, m)| m));
        stragglers.shuffle(&mut rng);
        Traffic {
            stream: with_copies,
            stragglers,
            last_seq: vec![per_context; contexts],
            absent,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_present_position_is_sent_and_nothing_else() {
        let spec = TrafficSpec {
            contexts: 7,
            messages: 700,
            window: 8,
            duplicates: 0.1,
            missing: 0.05,
            late: 0.5,
            seed: 3,
        };
        let t = spec.generate();
        for c in 0..7u32 {
            let mut sent: Vec<u64> = t.stream.iter().filter(|m| m.context == c).map(|m| m.seq).collect();
            sent.sort();
            sent.dedup();
            let expected: Vec<u64> = (1..=100).filter(|s| !t.absent[c as usize].contains(s)).collect();
            assert_eq!(sent, expected);
        }
        assert!(
            t.stream.len() > 700 - t.absent.iter().map(Vec::len).sum::<usize>(),
            "some duplicates"
        );
        assert!(
            t.stragglers
                .iter()
                .all(|m| t.absent[m.context as usize].contains(&m.seq))
        );
    }

    #[test]
    fn the_same_seed_gives_the_same_traffic() {
        let spec = TrafficSpec {
            contexts: 5,
            messages: 100,
            window: 4,
            duplicates: 0.2,
            missing: 0.1,
            late: 1.0,
            seed: 9,
        };
        assert_eq!(spec.generate().stream, spec.generate().stream);
    }
}

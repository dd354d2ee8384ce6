//! A linearizability checker for client histories (Wing & Gong's search with Lowe's
//! memoization, as Porcupine runs it), P-compositional: a history is split by key and
//! each key's operations are checked on their own, which is sound and complete when
//! every operation touches one key (Herlihy & Wing's locality).
//!
//! A history is a list of [`Operation`]s: what a client asked ([`Model::Input`]), when
//! it asked and when it heard back (any monotonic clock), and what it heard, or `None`
//! when it never knew (a timeout, a broken connection): such an operation may or may not
//! have taken effect, so it gets no return time (it stays concurrent with everything
//! after its call) and the model must accept any output for it.
//!
//! The search keeps a doubly linked list of call and return events in time order and
//! tries to *linearize* the first pending calls one by one: an operation can take
//! effect if the model accepts its output from the current state; a return event
//! reached while its operation is still pending means the choices so far were wrong,
//! so it backtracks. `(set of operations linearized, state)` pairs already explored
//! are remembered, which keeps the search polynomial for the low concurrency of a few
//! clients. Nondeterministic models are run as deterministic ones over *sets* of
//! states (Porcupine's power-set construction).
//!
//! Written for the chaos run (`crate::chaos`); Porcupine's `checker.go` is the reference
//! it follows.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt::Debug;
use std::hash::Hash;

/// The sequential specification a history is checked against.
pub trait Model {
    /// What a client asks.
    type Input: Debug + Clone;
    /// What it hears back (definite refusals, such as "not found", are outputs too).
    type Output: Debug + Clone;
    /// The state of one key.
    type State: Debug + Clone + Ord + Hash;

    /// The state of a key nobody touched yet.
    fn init(&self) -> Self::State;

    /// The states `input` can lead to from `state` when it answered `output` (or, for
    /// `None`, with whatever answer); empty when that answer is impossible there. For
    /// `None` the result must not be empty.
    fn step(
        &self,
        state: &Self::State,
        input: &Self::Input,
        output: Option<&Self::Output>,
    ) -> Vec<Self::State>;
}

/// One operation of a history.
#[derive(Debug, Clone)]
pub struct Operation<I, O> {
    /// Its id (unique in the history; reports name operations by it).
    pub id: u64,
    /// The client that issued it.
    pub client: usize,
    /// The key it touches: the history is checked key by key.
    pub key: String,
    /// What the client asked.
    pub input: I,
    /// What it heard, or `None` when the outcome is unknown.
    pub output: Option<O>,
    /// When it was invoked.
    pub call: u64,
    /// When the answer came; `None` (unknown outcome) means "some time after the call,
    /// possibly never".
    pub ret: Option<u64>,
}

/// Why a key's history is not linearizable.
#[derive(Debug, Clone)]
pub struct Violation<I, O, S> {
    /// The key.
    pub key: String,
    /// The longest sequence of operations the search could linearize, in order.
    pub longest_prefix: Vec<Operation<I, O>>,
    /// The states the model could be in after that prefix.
    pub states_after_prefix: Vec<S>,
    /// Operations that had returned by then but could not be linearized after the
    /// prefix: the offending ones.
    pub offending: Vec<Operation<I, O>>,
}

impl<I: Debug, O: Debug, S: Debug> std::fmt::Display for Violation<I, O, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "key {:?} is not linearizable:", self.key)?;
        writeln!(f, "  longest linearizable prefix ({} operations), last ones:", self.longest_prefix.len())?;
        for op in self.longest_prefix.iter().rev().take(8).rev() {
            writeln!(f, "    {}", describe(op))?;
        }
        writeln!(f, "  model state after it: {:?}", self.states_after_prefix)?;
        writeln!(f, "  cannot be linearized after it:")?;
        for op in &self.offending {
            writeln!(f, "    {}", describe(op))?;
        }
        Ok(())
    }
}

fn describe<I: Debug, O: Debug>(op: &Operation<I, O>) -> String {
    let ret = op.ret.map_or("?".to_string(), |r| r.to_string());
    let output = op.output.as_ref().map_or("unknown".to_string(), |o| format!("{o:?}"));
    format!("op {} (client {}) [{}..{}] {:?} -> {}", op.id, op.client, op.call, ret, op.input, output)
}

/// The result of checking one history.
#[derive(Debug)]
pub struct Report<I, O, S> {
    /// Keys checked and found linearizable.
    pub linearizable_keys: usize,
    /// Operations checked (unknown reads are dropped before the search).
    pub operations: usize,
    /// One violation per key that is not linearizable.
    pub violations: Vec<Violation<I, O, S>>,
    /// Keys whose search ran out of its step budget (neither proved nor refuted).
    pub inconclusive: Vec<String>,
}

impl<I, O, S> Report<I, O, S> {
    /// No violation and no inconclusive key.
    pub fn ok(&self) -> bool {
        self.violations.is_empty() && self.inconclusive.is_empty()
    }
}

/// Search steps allowed per key before the key is reported inconclusive.
pub const DEFAULT_STEP_BUDGET: u64 = 20_000_000;

/// Checks `history` key by key against `model`.
pub fn check<M: Model>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
    step_budget: u64,
) -> Report<M::Input, M::Output, M::State> {
    let mut by_key: BTreeMap<&str, Vec<Operation<_, _>>> = BTreeMap::new();
    for op in history {
        by_key.entry(&op.key).or_default().push(op.clone());
    }
    let mut report = Report {
        linearizable_keys: 0,
        operations: history.len(),
        violations: Vec::new(),
        inconclusive: Vec::new(),
    };
    for (key, ops) in by_key {
        match check_key(model, key, &ops, step_budget) {
            KeyResult::Linearizable => report.linearizable_keys += 1,
            KeyResult::Violation(v) => report.violations.push(*v),
            KeyResult::Inconclusive => report.inconclusive.push(key.to_string()),
        }
    }
    report
}

enum KeyResult<I, O, S> {
    Linearizable,
    Violation(Box<Violation<I, O, S>>),
    Inconclusive,
}

/// The deepest point a search reached: the operations linearized, the states after
/// them, and the operations whose return was reached there while still pending.
type Deepest<S> = (Vec<usize>, Vec<S>, BTreeSet<usize>);

/// A call or return event in the search's linked list.
#[derive(Clone, Copy)]
struct Event {
    op: usize,
    is_call: bool,
    /// For a call: the index of its return event.
    partner: usize,
}

/// Bit set of linearized operations.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Self {
        Bits(vec![0; n.div_ceil(64)])
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

fn check_key<M: Model>(
    model: &M,
    key: &str,
    ops: &[Operation<M::Input, M::Output>],
    step_budget: u64,
) -> KeyResult<M::Input, M::Output, M::State> {
    // Events in time order; on equal times calls first (the operations then overlap,
    // which allows more orders, never fewer).
    let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
    for (i, op) in ops.iter().enumerate() {
        events.push((op.call, true, i));
        events.push((op.ret.unwrap_or(u64::MAX), false, i));
    }
    events.sort_by_key(|&(t, is_call, op)| (t, !is_call, op));
    let n = events.len();
    let mut ret_of = vec![0; ops.len()];
    for (idx, &(_, is_call, op)) in events.iter().enumerate() {
        if !is_call {
            ret_of[op] = idx;
        }
    }
    let nodes: Vec<Event> = events
        .iter()
        .map(|&(_, is_call, op)| Event { op, is_call, partner: if is_call { ret_of[op] } else { 0 } })
        .collect();
    // Doubly linked list with a sentinel at index n: next[n] is the first event.
    let head = n;
    let mut next: Vec<usize> = (1..=n).chain([0]).collect();
    let mut prev: Vec<usize> = std::iter::once(n).chain(0..n).collect();
    if n == 0 {
        next[head] = head;
    }
    let unlink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, i: usize| {
        let (p, q) = (prev[i], next[i]);
        next[p] = q;
        prev[q] = p;
    };
    let relink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, i: usize| {
        let (p, q) = (prev[i], next[i]);
        next[p] = i;
        prev[q] = i;
    };

    let mut states: Vec<M::State> = vec![model.init()];
    let mut linearized = Bits::new(ops.len());
    let mut cache: HashSet<(Bits, Vec<M::State>)> = HashSet::new();
    // (op, its call event, the states before it)
    let mut stack: Vec<(usize, usize, Vec<M::State>)> = Vec::new();
    // The deepest point the search reached: (prefix, states after it, blocked ops).
    let mut best: Option<Deepest<M::State>> = None;
    let mut steps = 0u64;
    let mut entry = next[head];
    loop {
        steps += 1;
        if steps > step_budget {
            return KeyResult::Inconclusive;
        }
        if entry == head {
            return KeyResult::Linearizable;
        }
        let ev = nodes[entry];
        if ev.is_call {
            let op = &ops[ev.op];
            let mut after: BTreeSet<M::State> = BTreeSet::new();
            for s in &states {
                after.extend(model.step(s, &op.input, op.output.as_ref()));
            }
            if !after.is_empty() {
                let after: Vec<M::State> = after.into_iter().collect();
                linearized.set(ev.op);
                if cache.insert((linearized.clone(), after.clone())) {
                    stack.push((ev.op, entry, std::mem::replace(&mut states, after)));
                    unlink(&mut next, &mut prev, entry);
                    unlink(&mut next, &mut prev, ev.partner);
                    entry = next[head];
                    continue;
                }
                linearized.clear(ev.op);
            }
            entry = next[entry];
        } else {
            // A return reached with its operation pending: note how far we got.
            let depth = stack.len();
            match &mut best {
                Some((prefix, _, offending)) if prefix.len() == depth => {
                    offending.insert(ev.op);
                }
                Some((prefix, _, _)) if prefix.len() > depth => {}
                _ => {
                    best = Some((
                        stack.iter().map(|(op, _, _)| *op).collect(),
                        states.clone(),
                        BTreeSet::from([ev.op]),
                    ))
                }
            }
            let Some((op, call, before)) = stack.pop() else {
                let (prefix, states_after, offending) = best.expect("a return was reached");
                return KeyResult::Violation(Box::new(Violation {
                    key: key.to_string(),
                    longest_prefix: prefix.into_iter().map(|i| ops[i].clone()).collect(),
                    states_after_prefix: states_after,
                    offending: offending.into_iter().map(|i| ops[i].clone()).collect(),
                }));
            };
            linearized.clear(op);
            states = before;
            relink(&mut next, &mut prev, nodes[call].partner);
            relink(&mut next, &mut prev, call);
            entry = next[call];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A register: write(v) / read() -> v.
    struct Register;

    #[derive(Debug, Clone)]
    enum RegIn {
        Write(u32),
        Read,
    }

    impl Model for Register {
        type Input = RegIn;
        type Output = u32;
        type State = u32;
        fn init(&self) -> u32 {
            0
        }
        fn step(&self, s: &u32, input: &RegIn, output: Option<&u32>) -> Vec<u32> {
            match (input, output) {
                (RegIn::Write(v), _) => vec![*v],
                (RegIn::Read, None) => vec![*s],
                (RegIn::Read, Some(v)) if v == s => vec![*s],
                (RegIn::Read, Some(_)) => vec![],
            }
        }
    }

    fn op(id: u64, input: RegIn, output: Option<u32>, call: u64, ret: Option<u64>) -> Operation<RegIn, u32> {
        Operation { id, client: id as usize, key: "x".into(), input, output, call, ret }
    }

    #[test]
    fn overlapping_reads_of_old_and_new_value_are_linearizable() {
        let h = vec![
            op(1, RegIn::Write(1), Some(0), 0, Some(10)),
            op(2, RegIn::Read, Some(0), 1, Some(3)),
            op(3, RegIn::Read, Some(1), 2, Some(4)),
        ];
        let r = check(&Register, &h, DEFAULT_STEP_BUDGET);
        assert!(r.ok(), "{:?}", r.violations);
    }

    #[test]
    fn a_read_after_a_completed_write_seeing_the_old_value_is_not() {
        let h = vec![op(1, RegIn::Write(1), Some(0), 0, Some(10)), op(2, RegIn::Read, Some(0), 11, Some(12))];
        let r = check(&Register, &h, DEFAULT_STEP_BUDGET);
        assert_eq!(r.violations.len(), 1);
        let ids: Vec<u64> = r.violations[0].offending.iter().map(|o| o.id).collect();
        assert_eq!(ids, vec![2], "{}", r.violations[0]);
    }

    #[test]
    fn an_unknown_write_may_take_effect_late_or_never() {
        // The write's outcome is unknown: a read long after may see it or not.
        for seen in [0, 1] {
            let h =
                vec![op(1, RegIn::Write(1), None, 0, None), op(2, RegIn::Read, Some(seen), 100, Some(101))];
            assert!(check(&Register, &h, DEFAULT_STEP_BUDGET).ok());
        }
        // But once seen, it cannot be unseen.
        let h = vec![
            op(1, RegIn::Write(1), None, 0, None),
            op(2, RegIn::Read, Some(1), 100, Some(101)),
            op(3, RegIn::Read, Some(0), 102, Some(103)),
        ];
        assert_eq!(check(&Register, &h, DEFAULT_STEP_BUDGET).violations.len(), 1);
    }

    #[test]
    fn keys_are_checked_separately_and_budget_is_reported() {
        let mut h = vec![op(1, RegIn::Write(1), Some(0), 0, Some(1))];
        h.push(Operation { key: "y".into(), ..op(2, RegIn::Read, Some(0), 2, Some(3)) });
        let r = check(&Register, &h, DEFAULT_STEP_BUDGET);
        assert_eq!((r.linearizable_keys, r.violations.len()), (2, 0));
        let r = check(&Register, &h, 1);
        assert_eq!(r.inconclusive.len(), 2);
    }
}

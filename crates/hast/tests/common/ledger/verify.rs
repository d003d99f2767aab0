//! The ledger's verifier: reads every slot back and classifies it against the
//! [`Ledger`]. It writes nothing.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // test harness: a failed setup should panic loudly

use std::fmt;

use super::{Found, Ledger, NbdConn};

/// How many offending slots a verdict describes.
pub const MAX_DETAILS: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// Holds something older than its last acked write (an older block, or zeroes).
    Lost,
    /// Not a valid block of this slot: torn, misplaced, never issued, garbage.
    Corrupt,
    /// The read failed with an error reply (or the connection broke).
    ReadError,
}

/// One offending slot.
#[derive(Debug, Clone)]
pub struct Offence {
    pub problem: Problem,
    pub slot: u32,
    pub offset: u64,
    /// Last acked seq of the slot.
    pub expected_seq: u64,
    /// The seq the slot's header claims (0 for zeroes), None if unreadable or no header.
    pub found_seq: Option<u64>,
    pub detail: String,
}

impl fmt::Display for Offence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?}: slot {} at offset {}: expected seq {}, found {}: {}",
            self.problem,
            self.slot,
            self.offset,
            self.expected_seq,
            self.found_seq
                .map_or("nothing".to_string(), |s| format!("seq {s}")),
            self.detail
        )
    }
}

#[derive(Debug, Clone, Default)]
pub struct Verdict {
    pub slots: u32,
    pub acked_writes: u64,
    /// Slots that hold what the ledger allows.
    pub ok: u32,
    /// Of those, slots holding one of their uncertain writes.
    pub holding_uncertain: u32,
    /// Of those, slots holding an unacknowledged write cut by a crash: a sector-wise mix
    /// of their last acknowledged block and uncertain ones ([`Ledger::is_torn_uncertain`]).
    pub torn_uncertain: u32,
    pub lost: u32,
    pub corrupt: u32,
    pub read_errors: u32,
    /// The first [`MAX_DETAILS`] offending slots.
    pub offences: Vec<Offence>,
    /// Set if the connection broke: the slots after that one were not checked.
    pub aborted: Option<String>,
}

impl Verdict {
    pub fn is_clean(&self) -> bool {
        self.lost == 0 && self.corrupt == 0 && self.read_errors == 0 && self.aborted.is_none()
    }

    /// Panics with the summary and the details unless every slot is OK.
    pub fn assert_clean(&self) {
        if !self.is_clean() {
            let details: Vec<String> = self.offences.iter().map(|o| format!("  {o}")).collect();
            panic!("ledger verification failed: {self}\n{}", details.join("\n"));
        }
    }

    /// The described slots with `problem`.
    pub fn slots_with(&self, problem: Problem) -> Vec<u32> {
        self.offences
            .iter()
            .filter(|o| o.problem == problem)
            .map(|o| o.slot)
            .collect()
    }

    fn offend(&mut self, o: Offence) {
        match o.problem {
            Problem::Lost => self.lost += 1,
            Problem::Corrupt => self.corrupt += 1,
            Problem::ReadError => self.read_errors += 1,
        }
        if self.offences.len() < MAX_DETAILS {
            self.offences.push(o);
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "verified {} slots ({} acked writes): {} lost, {} corrupt, {} read errors",
            self.slots, self.acked_writes, self.lost, self.corrupt, self.read_errors
        )?;
        if self.holding_uncertain > 0 {
            write!(
                f,
                "; {} slots hold an uncertain write",
                self.holding_uncertain
            )?;
        }
        if self.torn_uncertain > 0 {
            write!(
                f,
                " ({} of them cut by the crash at a sector boundary)",
                self.torn_uncertain
            )?;
        }
        if let Some(why) = &self.aborted {
            write!(f, "; ABORTED: {why}")?;
        }
        Ok(())
    }
}

/// Reads every slot of `ledger` through `conn` and classifies it.
pub fn verify(conn: &mut NbdConn, ledger: &Ledger) -> Verdict {
    assert_eq!(conn.size(), ledger.device_size, "ledger of another device");
    let mut v = Verdict {
        slots: ledger.slot_count(),
        acked_writes: ledger.acked_writes,
        ..Verdict::default()
    };
    for slot in 0..ledger.slot_count() {
        let s = ledger.slot(slot);
        let offence = |problem, found_seq, detail: String| Offence {
            problem,
            slot,
            offset: s.offset,
            expected_seq: s.acked,
            found_seq,
            detail,
        };
        let data = match conn.read(s.offset, ledger.slot_size) {
            Ok(d) => d,
            Err(e) => {
                let broken = e.is_broken();
                v.offend(offence(Problem::ReadError, None, e.to_string()));
                if broken {
                    v.aborted = Some(format!("at slot {slot}: {e}"));
                    break;
                }
                continue;
            }
        };
        // (problem, seq found, detail); an OK detail marks a slot holding an uncertain write.
        let identified = ledger.identify(slot, &data);
        if matches!(
            identified,
            Found::Torn(_) | Found::Garbage | Found::Foreign { .. }
        ) && ledger.is_torn_uncertain(slot, &data)
        {
            v.ok += 1;
            v.holding_uncertain += 1;
            v.torn_uncertain += 1;
            continue;
        }
        let (problem, found, detail) = match identified {
            Found::Zeroes if s.acked == 0 => (None, Some(0), String::new()),
            Found::Zeroes => (Some(Problem::Lost), Some(0), "zeroes".to_string()),
            Found::Block(seq) if seq == s.acked => (None, Some(seq), String::new()),
            Found::Block(seq) if s.uncertain.contains(&seq) => {
                (None, Some(seq), "uncertain".to_string())
            }
            Found::Block(seq) if seq < s.acked => {
                (Some(Problem::Lost), Some(seq), "an older block".to_string())
            }
            Found::Block(seq) => (
                Some(Problem::Corrupt),
                Some(seq),
                format!("a block never written (issued up to {})", s.issued),
            ),
            Found::Torn(seq) => (
                Some(Problem::Corrupt),
                Some(seq),
                "header of this slot, body differs (torn or damaged)".to_string(),
            ),
            Found::Foreign {
                seed,
                slot: other,
                seq,
            } => (
                Some(Problem::Corrupt),
                Some(seq),
                format!("block of slot {other} seq {seq} of seed {seed} (misplaced)"),
            ),
            Found::Garbage => (
                Some(Problem::Corrupt),
                None,
                "not a ledger block".to_string(),
            ),
        };
        match problem {
            None => {
                v.ok += 1;
                v.holding_uncertain += u32::from(!detail.is_empty());
            }
            Some(p) => v.offend(offence(p, found, detail)),
        }
    }
    v
}

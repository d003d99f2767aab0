//! The ledger's workload: one driver thread issues writes (and flushes) through a
//! [`Pipeline`] and settles their replies into the [`Ledger`]. It does not verify.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // test harness: a failed setup should panic loudly

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hast_core::nbd::wire::{cmd, cmd_flags, tflags};

use super::{Ledger, LedgerConfig, NbdConn, NbdError, Pipeline, Reply};

/// How long `Workload::stop` waits for the replies of writes in flight.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// What one workload did.
#[derive(Debug, Clone, Default)]
pub struct WorkloadStats {
    pub acked: u64,
    /// Writes answered with an error reply (they are also counted in `uncertain`).
    pub error_replies: u64,
    /// Writes recorded uncertain: error replies plus writes never answered.
    pub uncertain: u64,
    pub fua_writes: u64,
    pub flushes: u64,
    pub flush_errors: u64,
    /// The connection broke, or we broke it (`abort`, or a drain that timed out).
    pub broken: bool,
    pub first_error: Option<String>,
}

impl fmt::Display for WorkloadStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} acked, {} error replies, {} uncertain, {} FUA, {} flushes ({} failed){}{}",
            self.acked,
            self.error_replies,
            self.uncertain,
            self.fua_writes,
            self.flushes,
            self.flush_errors,
            if self.broken {
                ", connection broken"
            } else {
                ""
            },
            self.first_error
                .as_ref()
                .map(|e| format!(", first error: {e}"))
                .unwrap_or_default()
        )
    }
}

#[derive(Default)]
struct Progress {
    acked: u64,
    done: bool,
}

type Shared = Arc<(Mutex<Progress>, Condvar)>;

/// A ledger workload running in background threads (a driver and the pipeline's reader).
pub struct Workload {
    stop: Arc<AtomicBool>,
    drain: Arc<AtomicBool>,
    progress: Shared,
    driver: Option<JoinHandle<(Ledger, WorkloadStats)>>,
}

impl Workload {
    /// Starts writing through `conn`, continuing `ledger`. Runs until `stop`/`abort`,
    /// until `cfg.max_writes` writes were acked, or until the connection breaks.
    pub fn start(conn: NbdConn, ledger: Ledger, cfg: &LedgerConfig) -> Workload {
        assert_eq!(conn.size(), ledger.device_size, "ledger of another device");
        assert!(!conn.has(tflags::READ_ONLY), "the export is read-only");
        assert!(
            cfg.fua_every == 0 || conn.has(tflags::SEND_FUA),
            "FUA not offered"
        );
        assert!(
            cfg.flush_every == 0 || conn.has(tflags::SEND_FLUSH),
            "FLUSH not offered"
        );
        assert!(cfg.in_flight >= 1);
        let progress: Shared = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let drain = Arc::new(AtomicBool::new(true));
        let driver = Driver {
            busy: vec![false; ledger.slots.len()],
            pipe: conn.into_pipeline(),
            ledger,
            cfg: cfg.clone(),
            stats: WorkloadStats::default(),
            pending: HashMap::new(),
            issued_writes: 0,
            acked_since_flush: 0,
            flush_pending: false,
            progress: progress.clone(),
            stop: stop.clone(),
            drain: drain.clone(),
        };
        let driver = std::thread::Builder::new()
            .name("ledger-driver".into())
            .spawn(move || driver.run())
            .unwrap();
        Workload {
            stop,
            drain,
            progress,
            driver: Some(driver),
        }
    }

    /// Writes of this workload acked so far.
    pub fn acked(&self) -> u64 {
        self.progress.0.lock().unwrap().acked
    }

    /// True once the driver ended (max_writes reached, connection broken, or stopped).
    pub fn is_done(&self) -> bool {
        self.progress.0.lock().unwrap().done
    }

    /// Waits until this workload has `n` acked writes; false on timeout or if it ended
    /// with fewer.
    pub fn wait_acked(&self, n: u64, timeout: Duration) -> bool {
        let (lock, cv) = &*self.progress;
        let guard = lock.lock().unwrap();
        let (guard, _) = cv
            .wait_timeout_while(guard, timeout, |p| p.acked < n && !p.done)
            .unwrap();
        guard.acked >= n
    }

    /// Waits until the workload ended by itself; false on timeout.
    pub fn wait_done(&self, timeout: Duration) -> bool {
        let (lock, cv) = &*self.progress;
        let guard = lock.lock().unwrap();
        let (guard, _) = cv.wait_timeout_while(guard, timeout, |p| !p.done).unwrap();
        guard.done
    }

    /// Stops issuing, waits up to [`DRAIN_TIMEOUT`] for the replies in flight (the rest
    /// are uncertain), and returns the ledger and what this workload did.
    pub fn stop(mut self) -> (Ledger, WorkloadStats) {
        self.finish()
    }

    /// Stops at once: breaks the connection (`broken` is set even if nothing was in
    /// flight), every write in flight is uncertain.
    pub fn abort(mut self) -> (Ledger, WorkloadStats) {
        self.drain.store(false, Ordering::SeqCst);
        self.finish()
    }

    fn finish(&mut self) -> (Ledger, WorkloadStats) {
        self.stop.store(true, Ordering::SeqCst);
        self.driver
            .take()
            .unwrap()
            .join()
            .expect("ledger driver panicked")
    }
}

impl Drop for Workload {
    /// A workload dropped without `stop` (a failing test) breaks its connection; a driver
    /// that panicked already said why, so its result is ignored here.
    fn drop(&mut self) {
        if let Some(driver) = self.driver.take() {
            self.drain.store(false, Ordering::SeqCst);
            self.stop.store(true, Ordering::SeqCst);
            let _ = driver.join();
        }
    }
}

enum Op {
    Write { slot: u32, seq: u64 },
    Flush,
}

/// The single thread that issues requests and settles replies, so the ledger needs no
/// lock and the sequence of slot choices does not depend on timing.
struct Driver {
    pipe: Pipeline,
    ledger: Ledger,
    cfg: LedgerConfig,
    stats: WorkloadStats,
    pending: HashMap<u64, Op>,
    busy: Vec<bool>,
    issued_writes: u64,
    acked_since_flush: u32,
    flush_pending: bool,
    progress: Shared,
    stop: Arc<AtomicBool>,
    drain: Arc<AtomicBool>,
}

const POLL: Duration = Duration::from_millis(20);

impl Driver {
    fn run(mut self) -> (Ledger, WorkloadStats) {
        let mut drain_deadline: Option<Instant> = None;
        loop {
            while let Some(r) = self.pipe.try_recv() {
                self.settle(r);
            }
            let stopped = self.stop.load(Ordering::SeqCst);
            if stopped && !self.stats.broken {
                let deadline =
                    *drain_deadline.get_or_insert_with(|| Instant::now() + DRAIN_TIMEOUT);
                if !self.drain.load(Ordering::SeqCst) {
                    self.cut("aborted by the test");
                } else if !self.pending.is_empty() && Instant::now() > deadline {
                    self.cut("stopped, and the replies in flight did not come in time");
                }
            }
            let finished = stopped
                || self.stats.broken
                || self.cfg.max_writes.is_some_and(|m| self.stats.acked >= m);
            if finished && self.pending.is_empty() {
                break;
            }
            if !finished && self.try_issue() {
                continue;
            }
            if let Some(r) = self.pipe.recv_timeout(POLL) {
                self.settle(r);
            }
        }
        if self.stats.broken {
            self.pipe.shutdown();
        } else {
            self.pipe.close();
        }
        let (lock, cv) = &*self.progress;
        lock.lock().unwrap().done = true;
        cv.notify_all();
        (self.ledger, self.stats)
    }

    /// Issues one request if a slot and an in-flight place are free; false otherwise.
    fn try_issue(&mut self) -> bool {
        if self.pending.len() >= self.cfg.in_flight {
            return false;
        }
        if self.cfg.flush_every > 0
            && self.acked_since_flush >= self.cfg.flush_every
            && !self.flush_pending
        {
            self.acked_since_flush = 0;
            self.flush_pending = true;
            match self.pipe.submit(cmd::FLUSH, 0, 0, 0, &[]) {
                Ok(cookie) => drop(self.pending.insert(cookie, Op::Flush)),
                Err(e) => self.broke(e),
            }
            return true;
        }
        let writes = self.pending.len() as u64 - u64::from(self.flush_pending);
        if self
            .cfg
            .max_writes
            .is_some_and(|m| self.stats.acked + writes >= m)
        {
            return false;
        }
        // The chooser is deterministic: a busy slot is waited for, never skipped.
        if self.busy[self.ledger.peek_slot() as usize] {
            return false;
        }
        let (slot, seq) = self.ledger.issue();
        self.issued_writes += 1;
        let fua = self.cfg.fua_every > 0
            && self
                .issued_writes
                .is_multiple_of(u64::from(self.cfg.fua_every));
        let block = self.ledger.block(slot, seq);
        let offset = self.ledger.slot(slot).offset;
        let flags = if fua { cmd_flags::FUA } else { 0 };
        match self
            .pipe
            .submit(cmd::WRITE, flags, offset, block.len() as u32, &block)
        {
            Ok(cookie) => {
                self.busy[slot as usize] = true;
                self.stats.fua_writes += u64::from(fua);
                self.pending.insert(cookie, Op::Write { slot, seq });
            }
            Err(e) => {
                // Maybe partly sent: its outcome is unknown.
                self.ledger.record_uncertain(slot, seq);
                self.stats.uncertain += 1;
                self.broke(e);
            }
        }
        true
    }

    /// Breaks the connection on purpose; the reader then answers every request in flight
    /// with an Io error, which makes its write uncertain.
    fn cut(&mut self, why: &str) {
        self.stats.broken = true;
        self.stats
            .first_error
            .get_or_insert_with(|| why.to_string());
        self.pipe.shutdown();
    }

    fn broke(&mut self, e: NbdError) {
        self.stats.broken = true;
        self.stats.first_error.get_or_insert_with(|| e.to_string());
    }

    fn settle(&mut self, reply: Reply) {
        let Some(op) = self.pending.remove(&reply.cookie) else {
            panic!(
                "reply for cookie {} that the ledger never sent",
                reply.cookie
            );
        };
        match (op, reply.result) {
            (Op::Write { slot, seq }, Ok(_)) => {
                self.busy[slot as usize] = false;
                self.ledger.record_acked(slot, seq);
                self.stats.acked += 1;
                self.acked_since_flush += 1;
                let (lock, cv) = &*self.progress;
                lock.lock().unwrap().acked += 1;
                cv.notify_all();
            }
            (Op::Write { slot, seq }, Err(e)) => {
                self.busy[slot as usize] = false;
                self.ledger.record_uncertain(slot, seq);
                self.stats.uncertain += 1;
                if e.is_broken() {
                    self.broke(e);
                } else {
                    self.stats.error_replies += 1;
                    self.stats.first_error.get_or_insert_with(|| e.to_string());
                }
            }
            (Op::Flush, result) => {
                self.flush_pending = false;
                match result {
                    Ok(_) => self.stats.flushes += 1,
                    Err(e) if e.is_broken() => self.broke(e),
                    Err(_) => self.stats.flush_errors += 1,
                }
            }
        }
    }
}

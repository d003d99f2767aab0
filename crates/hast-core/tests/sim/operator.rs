//! The actors around the pair: the client that uses the device, the operator (a failover
//! manager following the documented rules: promote the secondary when the primary is
//! gone, never a node that refuses; bring failed nodes back as secondaries; resolve a
//! split-brain by discarding the side promoted last), and the faults.

use hast_core::config::ReplicationMode;
use hast_core::metadata::{DataState, Role};
use hast_core::replication::primary::Event;
use hast_core::replication::{ReqId, WriteOp};

use crate::client::{Op, Pending};
use crate::disk::BLOCK;
use crate::world::{Ev, Proc, World};

/// Request numbers of the final verification's reads.
const FINAL_READS: u64 = 1 << 40;

impl World {
    /// The client issues its next request (if it may) and comes back soon.
    pub fn client_step(&mut self) {
        if !self.settling && self.issued < self.shape.requests {
            self.issue_one();
            let d = self.rng.range(1, 6);
            self.after(d, Ev::ClientStep);
        } else if self.settling {
            self.final_verify_step();
        }
    }

    fn target(&mut self) -> Option<usize> {
        let live: Vec<usize> = (0..2)
            .filter(|&n| matches!(&self.nodes[n].proc, Some(Proc::Primary(p)) if !p.stopping))
            .collect();
        match live.len() {
            0 => None,
            1 => Some(live[0]),
            _ => Some(live[self.rng.below(2) as usize]),
        }
    }

    fn issue_one(&mut self) {
        if self.client.pending.len() >= self.shape.depth {
            return;
        }
        if self.failback {
            // The application waits for the new primary's session.
            let connected = (0..2).any(
                |n| matches!(&self.nodes[n].proc, Some(Proc::Primary(p)) if p.m.status().connected),
            );
            if !connected {
                return;
            }
            self.failback = false;
        }
        let Some(node) = self.target() else {
            return;
        };
        let per = self.blocks_per_extent();
        let Some((req, op)) = self.client.draw(&mut self.rng, per) else {
            return;
        };
        self.issued += 1;
        self.submit(node, req, op);
    }

    fn submit(&mut self, node: usize, req: u64, op: Op) {
        self.client.pending.insert(
            req,
            Pending {
                op: op.clone(),
                node,
                after: self.client.answered,
                split: self.split,
                discarded: false,
            },
        );
        self.log(|| format!("client -> node {node}: #{req} {op:?}"));
        let event = match op {
            Op::Write {
                first,
                n,
                version,
                fua,
                zeroes,
            } => {
                if let Some(Proc::Primary(p)) = &mut self.nodes[node].proc {
                    p.payloads.insert(req, vec![version; n]);
                }
                Event::Write {
                    req: ReqId(req),
                    offset: first as u64 * BLOCK,
                    len: n as u64 * BLOCK,
                    fua,
                    op: if zeroes {
                        WriteOp::Zeroes { may_trim: false }
                    } else {
                        WriteOp::Data
                    },
                }
            }
            Op::Read { first, n } => Event::Read {
                req: ReqId(req),
                offset: first as u64 * BLOCK,
                len: n as u64 * BLOCK,
            },
            Op::Flush => Event::Flush { req: ReqId(req) },
        };
        self.feed_primary(node, event);
    }

    pub fn client_answer(&mut self, node: usize, req: u64, result: Result<Option<Vec<u64>>, u32>) {
        if req >= FINAL_READS {
            if let Err(e) = result {
                self.violation(format!(
                    "final read #{req} failed with errno {e} on a settled pair"
                ));
            }
        }
        self.log(|| {
            format!(
                "node {node} answers #{req}: {}",
                if result.is_ok() { "ok" } else { "error" }
            )
        });
        let (now, split) = (self.now, self.split);
        let alone = matches!(&self.nodes[node].proc,
            Some(Proc::Primary(p)) if !p.m.status().connected);
        let write = self
            .client
            .pending
            .get(&req)
            .is_some_and(|p| matches!(p.op, Op::Write { .. }));
        if alone && write && result.is_ok() {
            self.nodes[node].acked_alone = true;
        }
        if let Some(v) = self.client.answer(req, result, now, split, alone) {
            self.violation(v);
        }
    }

    /// `node` is a secondary whose status says connected and consistent.
    fn secondary_looks_current(&self, node: usize) -> bool {
        matches!(&self.nodes[node].proc, Some(Proc::Secondary(s))
            if s.m.status().connected && s.m.status().datastate.is_consistent())
    }

    /// One primary, connected to the secondary, nothing owed, no sync running: every
    /// acknowledged write is on both nodes (or on its way in the session's order).
    fn redundant(&self) -> bool {
        let primaries: Vec<usize> = (0..2).filter(|&n| self.is_primary(n)).collect();
        let [p] = primaries[..] else {
            return false;
        };
        let (Some(Proc::Primary(m)), Some(Proc::Secondary(sec))) =
            (&self.nodes[p].proc, &self.nodes[1 - p].proc)
        else {
            return false;
        };
        let st = m.m.status();
        st.connected
            && st.owed == 0
            && !st.stale
            && st.sync.is_none()
            && !m.stopping
            && sec.m.status().connected
    }

    /// Whether `node`'s copy lacks an acknowledged write (once its queue is applied).
    pub fn outdated(&self, node: usize) -> bool {
        if let Some(Proc::Secondary(s)) = &self.nodes[node].proc {
            if s.m.status().queue > 0 {
                return true;
            }
        }
        let disk = &self.nodes[node].disk;
        (0..disk.blocks()).any(|b| !self.client.blocks[b].allows(disk.get(b), self.split))
    }

    /// A sync completed: the two copies are the same as of now (unless the answer that
    /// completed it crossed a promotion of the other side: then the split goes on).
    pub fn pair_reconciled(&mut self) {
        self.paired = true;
        self.reconciled_at = self.now;
        for n in &mut self.nodes {
            n.acked_alone = false;
        }
        // A promotion under way (the secondary stopping to become primary) counts.
        let primaries = (0..2)
            .filter(|&n| self.is_primary(n) || self.nodes[n].next_role == Some(Role::Primary))
            .count();
        if primaries == 1 {
            self.split = None;
        }
    }

    /// Asks `node` for `role`: through a stop of the current process if there is one.
    pub fn set_role(&mut self, node: usize, role: Role) {
        match &mut self.nodes[node].proc {
            None => match role {
                Role::Primary => {
                    let _ = self.start_primary(node);
                }
                Role::Secondary => self.start_secondary(node),
                Role::Init => {}
            },
            Some(proc) => {
                self.nodes[node].next_role = Some(role);
                match proc {
                    Proc::Primary(p) => {
                        p.stopping = true;
                        self.feed_primary(node, Event::Stop);
                    }
                    Proc::Secondary(s) => {
                        s.stopping = true;
                        self.feed_secondary(
                            node,
                            hast_core::replication::secondary::SecondaryEvent::Stop,
                        );
                    }
                }
            }
        }
    }

    pub fn operator_after_stop(&mut self, node: usize) {
        if self.nodes[node].recreate && self.nodes[node].proc.is_none() {
            self.recreate(node);
        }
    }

    /// `hastctl role init; hastctl create; hastctl role secondary` on the discarded side.
    fn recreate(&mut self, node: usize) {
        self.nodes[node].recreate = false;
        let disk = &mut self.nodes[node].disk;
        disk.meta.resuid = 0;
        disk.meta.localcnt = 0;
        disk.meta.remotecnt = 0;
        disk.meta.datastate = DataState::CONSISTENT;
        let len = disk.bitmap.len();
        disk.bitmap = vec![0; len];
        // A blank node is never promoted before its full sync.
        self.nodes[node].epoch = 0;
        self.log(|| format!("node {node} recreated"));
        self.start_secondary(node);
    }

    fn in_transition(&self, node: usize) -> bool {
        self.nodes[node].next_role.is_some() || self.nodes[node].recreate
    }

    /// The failover manager, every few tens of milliseconds.
    pub fn operator_step(&mut self) {
        let d = self.rng.range(20, 80);
        self.after(d, Ev::OperatorStep);
        if (0..2).any(|n| self.in_transition(n)) {
            return;
        }
        // Split-brain: both nodes say it. Discard the side promoted last.
        if self.nodes[0].split_brain && self.nodes[1].split_brain {
            let x = if self.nodes[0].epoch > self.nodes[1].epoch {
                0
            } else {
                1
            };
            self.split_brains += 1;
            // A real divergence: each side acknowledged writes without the other since
            // the copies were last the same (a pair that dies before its first counter
            // mirror can report a split-brain with nothing on one side: not one).
            let diverged = self.nodes[0].acked_alone && self.nodes[1].acked_alone;
            if self.shape.fencing
                && self.shape.mode != ReplicationMode::Async
                && self.forced == 0
                && diverged
            {
                self.violation(
                    "split-brain with fencing on: two nodes acknowledged writes without each other"
                        .into(),
                );
                return;
            }
            let since = self.nodes[x].promoted_at;
            self.log(|| {
                format!("operator: split-brain, discarding node {x} (promoted at {since})")
            });
            self.client.discard(x, since);
            self.split = None;
            for n in &mut self.nodes {
                n.split_brain = false;
            }
            self.mistaken = None;
            self.nodes[x].recreate = true;
            if self.nodes[x].proc.is_some() {
                self.set_role(x, Role::Init);
            } else {
                self.recreate(x);
            }
            return;
        }
        // The secondary has the newer counters but an inconsistent copy, and the primary
        // lacks its last writes: only an operator can choose. After several faults this
        // is expected; the one here keeps the primary and discards the secondary's
        // unique writes (the other choice, `role -f primary` there, serves a copy known
        // to be inconsistent).
        if let Some(x) = (0..2).find(|&n| self.nodes[n].source_inconsistent && self.is_secondary(n))
        {
            self.nodes[x].source_inconsistent = false;
            if self.faults + self.degraded_hits < 2 {
                self.violation(format!(
                    "node {x} refuses to be synchronized (its newer copy is inconsistent) after a single fault"
                ));
                return;
            }
            if self.nodes[x].disk.meta.datastate.is_consistent() {
                // The refusal is the primary's: it is the newer side by the counters
                // but its own copy is inconsistent, and the secondary cannot help. The
                // manager forces it as it is (`role -f primary`); what it lacks is lost.
                let p = 1 - x;
                self.log(|| format!("operator: primary node {p} is the only source but inconsistent: forcing it"));
                for b in 0..self.nodes[p].disk.blocks() {
                    let v = self.nodes[p].disk.get(b);
                    self.client.concede(b, v, self.now, p);
                }
                self.forced += 1;
                self.nodes[p].force_primary = true;
                self.set_role(p, Role::Primary);
                return;
            }
            let mut since = self.nodes[x].promoted_at;
            if self.shape.fencing {
                // With fencing a node may hold writes of several promotions that the
                // other never got (it was the fenced writer each time): everything
                // since the copies were last the same goes.
                since = since.min(self.reconciled_at);
            }
            self.log(|| format!("operator: node {x} is newer but inconsistent, discarding its writes since {since}"));
            self.client.discard(x, since);
            self.nodes[x].recreate = true;
            self.set_role(x, Role::Init);
            return;
        }
        let primaries: Vec<usize> = (0..2).filter(|&n| self.is_primary(n)).collect();
        match primaries.as_slice() {
            [] => self.no_primary(),
            [p] => {
                let s = 1 - p;
                let failed = matches!(&self.nodes[*p].proc,
                    Some(Proc::Primary(m)) if m.m.status().disk_failed);
                if failed {
                    // Its disk lost data: the manager moves the role to the other node.
                    self.log(|| format!("operator: node {p} failed, to secondary"));
                    self.set_role(*p, Role::Secondary);
                    if self.is_secondary(s) {
                        self.switch_to = Some(s);
                    }
                } else if self.nodes[s].proc.is_none() {
                    // Bring the other node back (not always at once).
                    if self.settling || self.rng.chance(30) {
                        self.log(|| format!("operator: node {s} back as secondary"));
                        self.set_role(s, Role::Secondary);
                    }
                } else if self.switch_to.is_none()
                    && !self.settling
                    && self.mistaken.is_none()
                    && self.settled() == Some(*p)
                    && self.rng.chance(3)
                {
                    // A planned switchover.
                    self.log(|| format!("operator: switchover to node {s}"));
                    self.switch_to = Some(s);
                    self.set_role(*p, Role::Secondary);
                } else if self.switch_to.is_none()
                    && !self.settling
                    && self.mistaken.is_none()
                    && self.partition.is_none()
                    && self.is_secondary(s)
                    && !self.secondary_looks_current(s)
                    && self.nodes[s].disk.meta.datastate.is_consistent()
                    && self.nodes[s].disk.meta.resuid != 0
                    && self.split.is_none()
                    // It has not written since the primary last knew it (no split).
                    && self.nodes[s].disk.meta.localcnt == self.nodes[*p].disk.meta.remotecnt
                    && self.rng.chance(2)
                {
                    // A planned failback to the other node before it is resynchronised:
                    // the application stops, the old primary steps down (it drains to
                    // nobody: its last writes are the newer side), the other is promoted
                    // and becomes a *stale* primary at its handshake, which may serve
                    // nothing old while it syncs from the secondary.
                    self.log(|| format!("operator: failback to node {s}, not resynchronised yet"));
                    self.switch_to = Some(s);
                    self.failback = true;
                    self.set_role(*p, Role::Secondary);
                }
            }
            _ => {
                // Two primaries (a promotion during a partition). After the heal the
                // manager demotes the one it promoted last; the handshake decides.
                if self.partition.is_none() {
                    let x = self.mistaken.unwrap_or_else(|| {
                        if self.nodes[0].epoch > self.nodes[1].epoch {
                            0
                        } else {
                            1
                        }
                    });
                    self.log(|| format!("operator: two primaries, node {x} back to secondary"));
                    self.mistaken = None;
                    self.set_role(x, Role::Secondary);
                }
            }
        }
    }

    /// No primary: promote a secondary (the one switched to, or the one that was primary
    /// last); if none can be, bring a stopped node back as secondary.
    fn no_primary(&mut self) {
        let mut candidates: Vec<usize> = (0..2).filter(|&n| self.is_secondary(n)).collect();
        let planned = self.switch_to.take();
        if let Some(to) = planned {
            candidates.retain(|&n| n == to);
            candidates.insert(0, to);
        }
        candidates.sort_by_key(|&n| std::cmp::Reverse(self.nodes[n].epoch));
        for n in candidates {
            if self.nodes[n].refused && !self.settling && self.rng.chance(70) {
                continue;
            }
            // A freshly created node has no data to serve: it waits for its full sync.
            if self.nodes[n].disk.meta.resuid == 0 && self.nodes[1 - n].disk.meta.resuid != 0 {
                continue;
            }
            // Nor is a node that lacks acknowledged writes (a failover manager with
            // fencing knows it; without, promoting it is the split-brain the partition
            // fault plays out). Except after a single fault on a redundant pair: then
            // hast's own rules must suffice (a copy that lacks writes must say so), so
            // the manager follows them alone, and a copy wrongly thinking itself current
            // shows as a lost write.
            let rules_suffice =
                self.faults + self.degraded_hits <= 1 && self.shape.mode != ReplicationMode::Async;
            let failback = self.failback && planned == Some(n);
            if self.outdated(n) && !rules_suffice && !failback {
                continue;
            }
            let meta = &self.nodes[n].disk.meta;
            if !meta.datastate.is_consistent() {
                // The rules forbid it; the manager tries (hastctl refuses) and moves on.
                self.nodes[n].refused = true;
                self.refusals += 1;
                continue;
            }
            self.log(|| format!("operator: promote node {n}"));
            self.stuck_since = None;
            self.set_role(n, Role::Primary);
            return;
        }
        self.maybe_force();
        let stopped: Vec<usize> = (0..2).filter(|&n| self.nodes[n].proc.is_none()).collect();
        for n in stopped {
            if self.settling || self.rng.chance(40) {
                self.log(|| format!("operator: start node {n} as secondary"));
                self.set_role(n, Role::Secondary);
            }
        }
    }

    /// Both nodes are up as secondaries and neither may be promoted by the rules (one
    /// inconsistent, the other lacking acknowledged writes): after a while the operator
    /// forces the copy that lacks the least (`hastctl role -f primary`), accepting the
    /// loss. Only a double failure can lead here; a single fault never may.
    fn maybe_force(&mut self) {
        if !(self.is_secondary(0) && self.is_secondary(1)) {
            return;
        }
        let since = *self.stuck_since.get_or_insert(self.now);
        if self.now < since + 3000 {
            return;
        }
        // `async` acknowledges before the secondary has the data: after the primary's
        // loss the secondary may lack the last writes, by design (the mode's contract).
        if self.faults + self.degraded_hits < 2 && self.shape.mode != ReplicationMode::Async {
            let why: Vec<String> = (0..2)
                .map(|n| {
                    let disk = &self.nodes[n].disk;
                    let bad: Vec<String> = (0..disk.blocks())
                        .filter(|&b| !self.client.blocks[b].allows(disk.get(b), self.split))
                        .map(|b| format!("{b} (has {}, {:?})", disk.get(b), self.client.blocks[b]))
                        .collect();
                    format!(
                        "node {n}: {} resuid {} refused {} missing blocks {bad:?}",
                        disk.meta.datastate, disk.meta.resuid, self.nodes[n].refused
                    )
                })
                .collect();
            self.violation(format!(
                "no node may be promoted after a single fault: {}",
                why.join("; ")
            ));
            return;
        }
        let missing = |w: &World, n: usize| {
            let disk = &w.nodes[n].disk;
            (0..disk.blocks())
                .filter(|&b| !w.client.blocks[b].allows(disk.get(b), None))
                .count()
        };
        // Never a blank copy (recreated, no resuid): it has no history to serve, and as
        // a virgin primary it would pair with the recreated other without a sync.
        let blank = |w: &World, n: usize| w.nodes[n].disk.meta.resuid == 0;
        let n = match (blank(self, 0), blank(self, 1)) {
            (false, true) => 0,
            (true, false) => 1,
            _ if missing(self, 0) <= missing(self, 1) => 0,
            _ => 1,
        };
        self.log(|| format!("operator: no complete copy; forcing node {n}"));
        for b in 0..self.nodes[n].disk.blocks() {
            let v = self.nodes[n].disk.get(b);
            self.client.concede(b, v, self.now, n);
        }
        self.forced += 1;
        self.stuck_since = None;
        self.nodes[n].disk.meta.datastate = DataState::CONSISTENT;
        self.set_role(n, Role::Primary);
        // The other copy is discarded: recreated, it gets a full sync from the chosen one.
        let other = 1 - n;
        self.nodes[other].recreate = true;
        self.set_role(other, Role::Init);
    }

    /// A fault, now and then, until the budget is spent.
    pub fn fault_step(&mut self) {
        if self.settling || self.faults >= self.shape.faults {
            return;
        }
        if !self.paired {
            self.after(20, Ev::FaultStep);
            return;
        }
        let d = self.rng.range(50, 400);
        self.after(d, Ev::FaultStep);
        // A fault that hits a pair already without redundancy (degraded, syncing, a new
        // primary whose first session is not up yet) is a second failure as far as the
        // "a single fault loses nothing" rule is concerned.
        let redundant = self.redundant();
        if !redundant {
            self.degraded_hits += 1;
        }
        let node = self.rng.below(2) as usize;
        let kind = self.rng.below(10);
        let name = match kind {
            0 => {
                self.kill(node);
                "kill"
            }
            1 => {
                self.power_loss(node);
                "power loss"
            }
            2 | 3 => {
                if self.partition.is_some() {
                    return;
                }
                let since = self.now;
                self.partition = Some(since);
                let len = self.rng.range(20, 3000);
                self.after(len, Ev::Heal);
                let timeout = self.shape.timeout_ms;
                self.after(timeout, Ev::PartitionTimeout { since });
                // Sometimes the failover manager cannot tell a partition from a dead
                // primary and promotes the secondary (no fencing): a split.
                let promote = self.rng.chance(40);
                // A failover manager checks that the secondary is connected before it
                // promotes it (`hastctl status`: complete); one that promotes a
                // disconnected secondary serves whatever it has, by its own choice.
                // (Only a split is a mistake: with no primary, the manager's normal
                // rules apply.)
                // It goes by what the secondary's own status says: connected, its copy
                // consistent (all a manager can see there).
                let s = (0..2).find(|&n| self.secondary_looks_current(n));
                let live_primary = (0..2).any(|n| self.is_primary(n));
                if let (true, true, Some(s)) = (promote, live_primary, s) {
                    self.mistaken = Some(s);
                    self.split = Some((s, self.now));
                    self.log(|| format!("fault: partition; operator promotes node {s} by mistake"));
                    self.set_role(s, Role::Primary);
                    "partition + promotion"
                } else {
                    self.log(|| format!("fault: partition for {len} ms"));
                    "partition"
                }
            }
            4 => {
                self.nodes[node].disk.fail_writes = self.rng.range(1, 3) as u32;
                "write EIO"
            }
            5 => {
                self.nodes[node].disk.fail_flushes = self.rng.range(1, 2) as u32;
                "flush EIO"
            }
            6 => {
                self.nodes[node].disk.fail_reads = self.rng.range(1, 3) as u32;
                "read EIO"
            }
            7 => {
                self.nodes[node].disk.slow = self.rng.range(10, 60);
                let len = self.rng.range(100, 1500);
                self.after(len, Ev::Unslow { node });
                "slow disk"
            }
            _ => {
                let ids: Vec<_> = self.conns.keys().copied().collect();
                for id in ids {
                    self.break_conn(id, 1);
                }
                "connection reset"
            }
        };
        self.faults += 1;
        *self.fault_log.entry(name).or_insert(0) += 1;
        self.log(|| format!("fault: {name} (node {node})"));
    }

    /// After the last request: heal everything, let the pair settle, then read every
    /// block back through the primary.
    pub fn begin_settle(&mut self) {
        self.settling = true;
        self.settle_started = Some(self.now);
        self.heal();
        for n in &mut self.nodes {
            n.disk.fail_writes = 0;
            n.disk.fail_flushes = 0;
            n.disk.fail_reads = 0;
            n.disk.slow = 0;
        }
        self.after(1, Ev::ClientStep);
    }

    /// The final verification, one chunk of reads at a time once the pair is settled.
    fn final_verify_step(&mut self) {
        let d = 20;
        self.after(d, Ev::ClientStep);
        if self.verified {
            return;
        }
        let Some(p) = self.settled() else {
            return;
        };
        let a = &self.nodes[0].disk;
        let b = &self.nodes[1].disk;
        if let Some(block) = (0..a.blocks()).find(|&i| a.get(i) != b.get(i)) {
            self.violation(format!(
                "settled, but the copies differ at block {block}: {} vs {}",
                a.get(block),
                b.get(block)
            ));
        }
        let per = self.blocks_per_extent();
        let blocks = self.client.blocks.len();
        let mut first = 0;
        while first < blocks {
            let n = per.min(blocks - first);
            let req = FINAL_READS + first as u64;
            self.submit(p, req, Op::Read { first, n });
            first += n;
        }
        self.verified = true;
    }
}

//! The secondary's side of the handshake: `Hello`, `State` (decided once everything
//! before it is answered), the full sync's bitmap, the metadata the decision changes, and
//! the `StateReply` once all of it is on disk.

use super::*;

impl Secondary {
    pub(super) fn on_hello(
        &mut self,
        session: SessionId,
        hello: &Hello,
        key: Result<Option<Vec<u8>>, String>,
        nonce: [u8; auth::NONCE_LEN],
        out: &mut Vec<SecondaryAction>,
    ) {
        if self.sessions.contains_key(&session) {
            return self.violation(session, "a second Hello".into(), out);
        }
        let others: Vec<SessionId> = self.sessions.keys().copied().collect();
        for old in others {
            if self.takes_requests(old) {
                out.push(SecondaryAction::Notice(Notice::Replaced {
                    old,
                    new: session,
                }));
            }
            self.lose(old, out);
        }
        if self.stopping {
            let message = ErrorMessage {
                reason: Refusal::NotSecondary,
                message: "the resource is leaving role secondary".into(),
            };
            out.push(SecondaryAction::Refuse { session, message });
            out.push(SecondaryAction::Close { session });
            return;
        }
        let answer = match key {
            Ok(key) => SecondaryHandshake::on_hello(hello, key.as_deref(), nonce),
            Err(why) => SecondaryHandshake::version(hello).and(Err(ErrorMessage {
                reason: Refusal::LocalFailure,
                message: why,
            })),
        };
        match answer {
            Ok((hs, welcome)) => {
                self.sessions.insert(
                    session,
                    Session {
                        stage: Stage::Welcomed(Box::new(hs)),
                        lost: false,
                        failed: false,
                        map_cleared: false,
                        open: BTreeSet::new(),
                    },
                );
                out.push(SecondaryAction::Welcome { session, welcome });
            }
            Err(message) => {
                out.push(SecondaryAction::Refuse { session, message });
                out.push(SecondaryAction::Close { session });
            }
        }
    }

    pub(super) fn on_state(
        &mut self,
        session: SessionId,
        state: State,
        out: &mut Vec<SecondaryAction>,
    ) {
        let Some(s) = self.sessions.get_mut(&session).filter(|s| !s.lost) else {
            return;
        };
        let stage = std::mem::replace(&mut s.stage, Stage::Persisting);
        match stage {
            Stage::Welcomed(hs) => s.stage = Stage::Deferred(hs, Box::new(state)),
            other => {
                s.stage = other;
                self.violation(session, "an unexpected State".into(), out);
            }
        }
    }

    pub(super) fn accept(
        &mut self,
        session: SessionId,
        acc: Accepted,
        out: &mut Vec<SecondaryAction>,
    ) {
        if let Some(s) = self.sessions.get_mut(&session) {
            s.stage = Stage::Accepted;
        }
        self.split_brain_reported = false;
        out.push(SecondaryAction::Accept {
            session,
            reply: acc.reply,
            send_bitmap: acc.send_bitmap,
            decision: acc.decision,
        });
    }

    pub(super) fn refuse(
        &mut self,
        session: SessionId,
        message: ErrorMessage,
        out: &mut Vec<SecondaryAction>,
    ) {
        self.sessions.remove(&session);
        out.push(SecondaryAction::Refuse { session, message });
        out.push(SecondaryAction::Close { session });
    }

    /// Decides a deferred `State` once everything before it is answered.
    pub(super) fn decide_handshake(&mut self, out: &mut Vec<SecondaryAction>) {
        if !self.idle() {
            return;
        }
        let deferred = self.sessions.iter().find_map(|(id, s)| match s.stage {
            Stage::Deferred(..) if !s.lost => Some(*id),
            _ => None,
        });
        let Some(session) = deferred else { return };
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        let Stage::Deferred(hs, state) = std::mem::replace(&mut s.stage, Stage::Persisting) else {
            return;
        };
        match hs.on_state(&state, self.meta.current()) {
            Err(refused) => {
                if refused.split_brain && !self.split_brain_reported {
                    self.split_brain_reported = true;
                    out.push(SecondaryAction::Notice(Notice::SplitBrain));
                }
                if let Some(detail) = refused.detail {
                    out.push(SecondaryAction::Notice(Notice::Refused {
                        session,
                        reason: refused.message.reason,
                        detail,
                    }));
                }
                self.refuse(session, refused.message, out);
            }
            Ok(acc) if acc.decision.sync_kind() == SyncKind::Full && !self.no_fill() => {
                // The adopted resuid (or a sync target's mark) makes the next handshake
                // trust the bitmaps, but this copy differs from the other everywhere until
                // the full sync has run, and the primary marks every extent only after
                // this reply. Both crashing in between must not leave extents that
                // differ and that no bitmap marks: this one marks them all first.
                self.filling = Some((session, Box::new(acc)));
                out.push(SecondaryAction::FillBitmap { session });
            }
            Ok(acc) => self.persist_accept(session, acc, out),
        }
    }

    /// Writes what accepting `session` changes in the metadata, then accepts it.
    pub(super) fn persist_accept(
        &mut self,
        session: SessionId,
        acc: Accepted,
        out: &mut Vec<SecondaryAction>,
    ) {
        let Some(next) = acc.next_meta.clone() else {
            return self.accept(session, acc, out);
        };
        let before = Box::new(self.meta.current().clone());
        let gen = self.meta.change(|m| *m = next);
        self.waiters
            .push((gen, Waiter::Accept(session, Box::new(acc), before)));
    }

    pub(super) fn on_filled(
        &mut self,
        session: SessionId,
        ok: bool,
        out: &mut Vec<SecondaryAction>,
    ) {
        let Some((id, acc)) = self.filling.take() else {
            return;
        };
        if id != session {
            self.filling = Some((id, acc));
            return;
        }
        let live = self.sessions.get(&session).is_some_and(|s| !s.lost);
        match (live, ok) {
            (true, true) => self.persist_accept(session, *acc, out),
            (true, false) => {
                let message = ErrorMessage {
                    reason: Refusal::LocalFailure,
                    message: "cannot write the activemap on the secondary".into(),
                };
                self.refuse(session, message, out);
            }
            (false, _) => {
                if self.sessions.remove(&session).is_some() {
                    out.push(SecondaryAction::Close { session });
                }
            }
        }
    }

    #[cfg(feature = "mutations")]
    pub(super) fn no_fill(&self) -> bool {
        self.mutation == Some(Mutation::NoFullSyncBitmap)
    }

    #[cfg(not(feature = "mutations"))]
    pub(super) fn no_fill(&self) -> bool {
        false
    }
}

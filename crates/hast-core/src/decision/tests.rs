use proptest::prelude::*;

use super::*;

const TABLE: &str = include_str!("../../testdata/decision.txt");

fn label(d: &Decision) -> &'static str {
    match *d {
        Decision::Fresh {
            full_sync: false, ..
        } => "fresh-nosync",
        Decision::Fresh {
            full_sync: true,
            source: Side::Primary,
            ..
        } => "fresh-full-from-primary",
        Decision::Fresh {
            full_sync: true,
            source: Side::Secondary,
            ..
        } => "fresh-full-from-secondary",
        Decision::ResuidMismatch { .. } => "resuid-mismatch",
        Decision::InSync => "in-sync",
        Decision::SyncFrom(Side::Primary) => "sync-from-primary",
        Decision::SyncFrom(Side::Secondary) => "sync-from-secondary",
        Decision::SplitBrain => "split-brain",
        Decision::Inconsistent {
            source: Side::Primary,
        } => "full-from-primary",
        Decision::Inconsistent {
            source: Side::Secondary,
        } => "full-from-secondary",
        Decision::SourceInconsistent { .. } => "source-inconsistent",
    }
}

/// `key=v1/v2/...` -> the numbers, and whether a trailing `virgin` was present.
fn numbers(field: &str, key: &str) -> Result<(Vec<u64>, bool), String> {
    let value = field
        .strip_prefix(key)
        .and_then(|rest| rest.strip_prefix('='))
        .ok_or_else(|| format!("expected {key}=..., got {field}"))?;
    let mut virgin = false;
    let mut out = Vec::new();
    for part in value.split('/') {
        if part == "virgin" {
            virgin = true;
        } else {
            out.push(part.parse().map_err(|e| format!("{part}: {e}"))?);
        }
    }
    Ok((out, virgin))
}

fn flag(field: &str, key: &str) -> Result<bool, String> {
    match field.strip_prefix(key).and_then(|r| r.strip_prefix('=')) {
        Some("true") => Ok(true),
        Some("false") => Ok(false),
        _ => Err(format!("expected {key}=true|false, got {field}")),
    }
}

fn triple(field: &str, key: &str) -> Result<([u64; 3], bool), String> {
    let (n, virgin) = numbers(field, key)?;
    let n: [u64; 3] = n
        .try_into()
        .map_err(|_| format!("{field}: want three numbers"))?;
    Ok((n, virgin))
}

/// Runs one line; `Ok(None)` for blank/comment lines, else the actual outcome and the
/// expected one.
fn run(line: &str) -> Result<Option<(String, String)>, String> {
    let line = line.split('#').next().unwrap_or("").trim();
    if line.is_empty() {
        return Ok(None);
    }
    let (input, expected) = line.split_once("=>").ok_or("missing =>")?;
    let fields: Vec<&str> = input.split_whitespace().collect();
    let actual = match fields.as_slice() {
        ["decide", p, s] => {
            let ([resuid, localcnt, remotecnt], virgin) = triple(p, "p")?;
            let primary = PrimaryState {
                resuid,
                localcnt,
                remotecnt,
                virgin,
            };
            let ([resuid, localcnt, remotecnt], _) = triple(s, "s")?;
            let secondary = SecondaryState {
                resuid,
                localcnt,
                remotecnt,
            };
            let decision = decide(&primary, &secondary);
            check_consistency(&decision)?;
            label(&decision).to_string()
        }
        ["raise", m, l] => {
            let memory = match m.strip_prefix("memory=") {
                Some("unknown") => PeerMemory::UNKNOWN,
                _ => match numbers(m, "memory")?.0[..] {
                    [r] => PeerMemory::learned(r),
                    _ => return Err("raise needs memory=N|unknown".into()),
                },
            };
            let [l] = numbers(l, "localcnt")?.0[..] else {
                return Err("raise needs localcnt=N".into());
            };
            match memory.raise(l) {
                Some(next) => {
                    // A raise is needed once per epoch: never again right after it.
                    if memory.after_raise(l).raise(next).is_some() {
                        return Err(format!("{input}: raises twice"));
                    }
                    next.to_string()
                }
                None => "none".to_string(),
            }
        }
        ["decide", p, s, pc, sc] => {
            let ([resuid, localcnt, remotecnt], virgin) = triple(p, "p")?;
            let primary = PrimaryState {
                resuid,
                localcnt,
                remotecnt,
                virgin,
            };
            let ([resuid, localcnt, remotecnt], _) = triple(s, "s")?;
            let secondary = SecondaryState {
                resuid,
                localcnt,
                remotecnt,
            };
            let decision = apply_data_states(
                decide(&primary, &secondary),
                flag(pc, "primary_consistent")?,
                flag(sc, "secondary_consistent")?,
            );
            check_consistency(&decision)?;
            let target = match decision.sync_target() {
                Some(Side::Primary) => " target=primary",
                Some(Side::Secondary) => " target=secondary",
                None => "",
            };
            format!("{}{target}", label(&decision))
        }
        ["synced", p, s] => {
            let (pn, _) = numbers(p, "p")?;
            let (sn, _) = numbers(s, "s")?;
            let (&[pl], &[sl]) = (&pn[..], &sn[..]) else {
                return Err("synced needs one number per side".into());
            };
            let ((pl, pr), (sl, sr)) = counters_after_sync(pl, sl);
            format!("p={pl}/{pr} s={sl}/{sr}")
        }
        _ => return Err(format!("unknown case: {input}")),
    };
    Ok(Some((actual, expected.trim().to_string())))
}

/// The derived facts of a decision agree with each other.
fn check_consistency(d: &Decision) -> Result<(), String> {
    let refused = d.errmsg().is_some();
    let ok = refused == d.syncsrc().is_none()
        && (refused
            == matches!(
                d,
                Decision::ResuidMismatch { .. }
                    | Decision::SplitBrain
                    | Decision::SourceInconsistent { .. }
            ))
        && (d.sync_target().is_none()
            || d.sync_kind() != SyncKind::None
            || matches!(
                d,
                Decision::Fresh {
                    primary_wrote: true,
                    ..
                }
            ))
        && (d.sync_target().is_none() || d.sync_target() != d.syncsrc())
        && (!refused || d.sync_kind() == SyncKind::None)
        && d.secondary_adopts_resuid() == matches!(d, Decision::Fresh { .. });
    ok.then_some(())
        .ok_or_else(|| format!("inconsistent {d:?}"))
}

#[test]
fn decision_table_file() {
    let mut failures = Vec::new();
    let mut cases = 0;
    for (n, line) in TABLE.lines().enumerate() {
        match run(line) {
            Ok(None) => {}
            Ok(Some((actual, expected))) => {
                cases += 1;
                if actual != expected {
                    failures.push(format!(
                        "decision.txt:{}: got {actual}, want {expected}",
                        n + 1
                    ));
                }
            }
            Err(e) => failures.push(format!("decision.txt:{}: {e}", n + 1)),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(cases >= 40, "only {cases} cases parsed");
}

#[test]
fn messages_match_freebsd() {
    assert_eq!(
        Decision::SplitBrain.errmsg().as_deref(),
        Some("Split-brain condition!")
    );
    assert_eq!(
        Decision::ResuidMismatch {
            primary: 1,
            secondary: 2
        }
        .errmsg()
        .as_deref(),
        Some("Resource unique ID mismatch (primary=1, secondary=2).")
    );
    assert_eq!(Decision::InSync.errmsg(), None);
}

#[test]
fn resuid_and_localcnt_rules() {
    assert_eq!(primary_resuid(0, 0), None);
    assert_eq!(
        primary_resuid(0, 9),
        Some(ResuidInit {
            resuid: 9,
            virgin: true
        })
    );
    assert_eq!(
        primary_resuid(5, 9),
        Some(ResuidInit {
            resuid: 5,
            virgin: false
        })
    );
    assert_eq!(localcnt_after_virgin_reply(true, 0), Some(1));
    assert_eq!(localcnt_after_virgin_reply(true, 2), None);
    assert_eq!(localcnt_after_virgin_reply(false, 0), None);
}

/// §7.3 scenarios 1-3 and 5 driven through the counter functions, node by node.
#[test]
fn scenarios_through_the_counter_rules() {
    // 1. Both created. A primary generates a resuid and sends virgin; B adopts.
    let a_init = primary_resuid(0, 0xabc).unwrap();
    let mut a = PrimaryState {
        resuid: a_init.resuid,
        localcnt: 0,
        remotecnt: 0,
        virgin: a_init.virgin,
    };
    let mut b = SecondaryState {
        resuid: 0,
        localcnt: 0,
        remotecnt: 0,
    };
    let d = decide(&a, &b);
    assert_eq!(d.sync_kind(), SyncKind::None);
    assert!(d.secondary_adopts_resuid());
    b.resuid = a.resuid;
    a.localcnt = localcnt_after_virgin_reply(d.reply_virgin(), a.localcnt).unwrap();
    assert_eq!(a.localcnt, 1);
    ((a.localcnt, a.remotecnt), (b.localcnt, b.remotecnt)) =
        counters_after_sync(a.localcnt, b.localcnt);
    a.virgin = false;
    let remembered_b_remotecnt = b.remotecnt;
    // 2. Link drops; the first write raises, later ones do not.
    let memory = PeerMemory::learned(remembered_b_remotecnt);
    let raised = memory.raise(a.localcnt).unwrap();
    assert_eq!(raised, a.localcnt + 1);
    let memory = memory.after_raise(a.localcnt);
    a.localcnt = raised;
    assert_eq!(memory.raise(a.localcnt), None);
    // 3. Reconnect: secondary out of date, sync from A; both record it.
    assert_eq!(decide(&a, &b), Decision::SyncFrom(Side::Primary));
    ((a.localcnt, a.remotecnt), (b.localcnt, b.remotecnt)) =
        counters_after_sync(a.localcnt, b.localcnt);
    assert_eq!(decide(&a, &b), Decision::InSync);
    // 4. Had A crashed before its own record, promoting B and writing there is still
    //    seen as "B is newer", not as split-brain.
    let (a_unrecorded, mut b_promoted) = (PrimaryState { remotecnt: 0, ..a }, b);
    b_promoted.localcnt = PeerMemory::UNKNOWN.raise(b.localcnt).unwrap();
    let as_primary = PrimaryState {
        resuid: b_promoted.resuid,
        localcnt: b_promoted.localcnt,
        remotecnt: b_promoted.remotecnt,
        virgin: false,
    };
    let as_secondary = SecondaryState {
        resuid: a_unrecorded.resuid,
        localcnt: a_unrecorded.localcnt,
        remotecnt: a_unrecorded.remotecnt,
    };
    assert_eq!(
        decide(&as_primary, &as_secondary),
        Decision::SyncFrom(Side::Primary)
    );
    // 5. Partition with both promoted: each bumps its localcnt once.
    a.localcnt += 1;
    b.localcnt += 1;
    assert_eq!(decide(&a, &b), Decision::SplitBrain);
}

/// FreeBSD's `init_remote` if-chain transcribed literally, for the paired case.
#[allow(clippy::nonminimal_bool)] // kept as FreeBSD writes it, on purpose
fn freebsd(p: &PrimaryState, s: &SecondaryState) -> Decision {
    let (sl, sr, pl, pr) = (s.localcnt, s.remotecnt, p.localcnt, p.remotecnt);
    if (sl > pr && sr == pl) || (sl == pr && sr == pl) || (sl == pr && sr < pl) {
        if sl > pr && sr == pl {
            Decision::SyncFrom(Side::Secondary)
        } else if sl == pr && sr == pl {
            Decision::InSync
        } else {
            Decision::SyncFrom(Side::Primary)
        }
    } else if sl > pr && pl > sr {
        Decision::SplitBrain
    } else if sl > pr {
        Decision::Inconsistent {
            source: Side::Secondary,
        }
    } else {
        Decision::Inconsistent {
            source: Side::Primary,
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// For paired providers (same non-zero resuid) we agree with FreeBSD exactly.
    #[test]
    fn paired_rows_match_freebsd(
        resuid in 1u64..,
        counters in proptest::array::uniform4(0u64..5),
        virgin in any::<bool>(),
    ) {
        let [pl, pr, sl, sr] = counters;
        let p = PrimaryState { resuid, localcnt: pl, remotecnt: pr, virgin };
        let s = SecondaryState { resuid, localcnt: sl, remotecnt: sr };
        let d = decide(&p, &s);
        prop_assert_eq!(d, freebsd(&p, &s));
        prop_assert!(check_consistency(&d).is_ok());
    }
}

/// A `SyncDone` the secondary applied but whose answer was lost: the secondary remembers
/// the primary's counter, so the primary's next unconfirmed write must raise past it, or
/// a secondary promoted meanwhile would look like the newer side, not a split-brain.
#[test]
fn a_syncdone_in_flight_counts_as_remembered() {
    let memory = PeerMemory::learned(0).may_remember(1);
    assert_eq!(memory.raise(1), Some(2));
    assert_eq!(
        PeerMemory::learned(5).may_remember(3),
        PeerMemory::learned(5)
    );
    assert_eq!(PeerMemory::UNKNOWN.may_remember(3), PeerMemory::UNKNOWN);
}

//! The map-write protocol with writers interleaved the way concurrent daemon tasks would:
//! writes wait for their generation, bitmap writes start, finish, or fail torn, in any
//! order. Checked: no write's data is issued before the disk covers its extents.

use std::collections::BTreeSet;

use proptest::prelude::*;

use super::tests::bits_of;
use super::*;

const EXT: u64 = 4096;

#[derive(Debug, Clone)]
enum Step {
    Start(u64, u64),
    Issue(usize),
    BeginMapWrite,
    FinishMapWrite,
    /// The bitmap write failed part-way: each byte is old or new as the seed's bits say.
    TornMapWrite(u64),
    Complete(usize, bool),
    Synced(u64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (any::<u64>(), any::<u64>()).prop_map(|(a, b)| Step::Start(a, b)),
        3 => any::<usize>().prop_map(Step::Issue),
        2 => Just(Step::BeginMapWrite),
        2 => Just(Step::FinishMapWrite),
        1 => any::<u64>().prop_map(Step::TornMapWrite),
        3 => (any::<usize>(), any::<bool>()).prop_map(|(i, ok)| Step::Complete(i, ok)),
        1 => any::<u64>().prop_map(Step::Synced),
    ]
}

fn extents(off: u64, len: u64) -> BTreeSet<u64> {
    if len == 0 {
        return BTreeSet::new();
    }
    (off / EXT..=(off + len - 1) / EXT).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn data_never_precedes_its_bitmap(
        keepdirty in 0u32..4,
        steps in proptest::collection::vec(step(), 1..120),
    ) {
        let datasize = 12 * EXT + 100;
        let mut am = ActiveMap::new(datasize, EXT as u32, keepdirty, 512).unwrap();
        let mut disk = vec![0u8; am.ondisk_size() as usize];
        let mut ticket: Option<MapWrite> = None;
        let mut waiting: Vec<(u64, u64, u64)> = Vec::new();
        let mut issued: Vec<(u64, u64)> = Vec::new();
        for step in steps {
            match step {
                Step::Start(a, b) => {
                    let off = a % (datasize + 1);
                    let len = b % ((datasize - off).min(2 * EXT) + 1);
                    let needed = match am.write_start(off, len).unwrap() {
                        MapUpdate::Write { generation } => generation,
                        _ => 0,
                    };
                    waiting.push((off, len, needed));
                }
                Step::Issue(i) if !waiting.is_empty() => {
                    let i = i % waiting.len();
                    let (off, len, needed) = waiting[i];
                    if am.written_generation() >= needed {
                        waiting.swap_remove(i);
                        issued.push((off, len));
                    }
                }
                Step::BeginMapWrite if ticket.is_none() => {
                    ticket = am.begin_map_write();
                    if ticket.is_none() {
                        prop_assert!(!am.map_write_needed());
                    }
                }
                Step::FinishMapWrite => {
                    if let Some(write) = ticket.take() {
                        disk = write.image;
                        am.mark_written(write.generation).unwrap();
                    }
                }
                Step::TornMapWrite(seed) => {
                    if let Some(write) = ticket.take() {
                        for (i, byte) in write.image.iter().enumerate() {
                            if seed >> (i % 64) & 1 == 1 {
                                disk[i] = *byte;
                            }
                        }
                        am.abandon_map_write(write.generation).unwrap();
                    }
                }
                Step::Complete(i, ok) if !issued.is_empty() => {
                    let (off, len) = issued.swap_remove(i % issued.len());
                    let _ = am.write_complete(off, len, WriteOutcome::from_replicated(ok)).unwrap();
                }
                Step::Synced(e) => {
                    let _ = am.extent_synced(e % am.extent_count()).unwrap();
                }
                _ => {}
            }
            let on_disk = bits_of(&disk);
            for &(off, len) in &issued {
                let need = extents(off, len);
                prop_assert!(need.is_subset(&on_disk), "issued {:?} not covered by {:?}", need, on_disk);
            }
            for e in 0..am.extent_count() {
                if am.is_sync_owed(e) {
                    prop_assert!(on_disk.contains(&e), "owed extent {} not on disk", e);
                }
            }
            // Liveness: a waiting write can always be served by the next bitmap write.
            if ticket.is_none() {
                for &(_, _, needed) in &waiting {
                    prop_assert!(am.generation() >= needed);
                }
            }
        }
    }
}

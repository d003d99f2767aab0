use std::collections::BTreeSet;

use proptest::prelude::*;

use super::*;

const EXT: u32 = 4096;
const SECTOR: u32 = 512;

pub(super) fn bits_of(image: &[u8]) -> BTreeSet<u64> {
    let mut set = BTreeSet::new();
    for (i, byte) in image.iter().enumerate() {
        for bit in 0..8 {
            if byte & (1 << bit) != 0 {
                set.insert(i as u64 * 8 + bit);
            }
        }
    }
    set
}

/// Follows the map-write protocol synchronously until `update` is satisfied; returns the
/// image now on disk (or `disk` unchanged).
fn satisfy(am: &mut ActiveMap, update: MapUpdate, disk: &mut BTreeSet<u64>) {
    if let MapUpdate::Write { generation } = update {
        while am.written_generation() < generation {
            let write = am.begin_map_write().expect("no other writer in this test");
            *disk = bits_of(&write.image);
            am.mark_written(write.generation).unwrap();
        }
    }
}

fn flush_lazy(am: &mut ActiveMap, disk: &mut BTreeSet<u64>) {
    if let Some(write) = am.begin_map_write() {
        *disk = bits_of(&write.image);
        am.mark_written(write.generation).unwrap();
    }
}

// ---------------------------------------------------------------- unit tests

#[test]
fn ondisk_size_worked_example() {
    // hast-reference §4.2: 1 TiB, 2 MiB extents -> 524288 extents -> 65536 bytes.
    assert_eq!(ondisk_size(1 << 40, 2 << 20, 512), 65536);
    assert_eq!(ondisk_size(1 << 40, 2 << 20, 4096), 65536);
    // One extent still needs a byte, rounded to a sector.
    assert_eq!(ondisk_size(1, 4096, 512), 512);
    assert_eq!(ondisk_size(0, 4096, 512), 0);
    // 9 extents -> 2 bytes -> one sector.
    assert_eq!(ondisk_size(9 * 4096 - 1, 4096, 512), 512);
    assert_eq!(ondisk_size(4097 * 8 * 4096, 4096, 512), 4608);
}

#[test]
fn geometry_is_validated() {
    assert_eq!(
        ActiveMap::new(1 << 20, 4096, 4, 0).unwrap_err(),
        ActiveMapError::BadSectorSize(0)
    );
    assert_eq!(
        ActiveMap::new(1 << 20, 4096, 4, 1000).unwrap_err(),
        ActiveMapError::BadSectorSize(1000)
    );
    assert!(matches!(
        ActiveMap::new(1 << 20, 3000, 4, 512),
        Err(ActiveMapError::BadExtentSize { .. })
    ));
    assert!(matches!(
        ActiveMap::new(1 << 20, 256, 4, 512),
        Err(ActiveMapError::BadExtentSize { .. })
    ));
    let am = ActiveMap::new(10 * 4096 + 100, 4096, 4, 512).unwrap();
    assert_eq!(am.extent_count(), 11);
    assert_eq!(am.extentsize(), 4096);
    assert_eq!(am.extent_range(10), Some((40960, 100)));
    assert_eq!(am.extent_range(11), None);
}

#[test]
fn first_write_needs_map_then_hot_extent_does_not() {
    let mut am = ActiveMap::new(16 * 4096, EXT, 4, SECTOR).unwrap();
    let update = am.write_start(100, 200).unwrap();
    assert_eq!(update, MapUpdate::Write { generation: 1 });
    // A second write to the same extent while the first map write is not done must wait
    // for the same generation.
    assert_eq!(
        am.write_start(0, 512).unwrap(),
        MapUpdate::Write { generation: 1 }
    );
    let write = am.begin_map_write().unwrap();
    assert_eq!(write.generation, 1);
    assert_eq!(write.image.len(), 512);
    assert_eq!(write.image[0], 0b1);
    am.mark_written(1).unwrap();
    assert_eq!(am.write_start(4000, 96).unwrap(), MapUpdate::None);
    for _ in 0..3 {
        assert_eq!(
            am.write_complete(0, 512, WriteOutcome::Replicated).unwrap(),
            MapUpdate::None
        );
    }
    // In the LRU: clean in memory, still set on disk, no map write needed.
    assert!(!am.is_dirty(0));
    assert_eq!(am.dirty_bytes(), 0);
    assert_eq!(am.ondisk_image()[0], 1);
    assert!(!am.map_write_needed());
}

#[test]
fn keepdirty_zero_clears_on_completion() {
    let mut am = ActiveMap::new(16 * 4096, EXT, 0, SECTOR).unwrap();
    let mut disk = BTreeSet::new();
    let u = am.write_start(4096, 4096).unwrap();
    assert_eq!(u, MapUpdate::Write { generation: 1 });
    satisfy(&mut am, u, &mut disk);
    assert_eq!(disk, BTreeSet::from([1]));
    let u = am
        .write_complete(4096, 4096, WriteOutcome::Replicated)
        .unwrap();
    assert_eq!(u, MapUpdate::Lazy { generation: 2 });
    assert!(am.map_write_needed());
    flush_lazy(&mut am, &mut disk);
    assert!(disk.is_empty());
}

#[test]
fn eviction_rides_along_with_the_new_extent() {
    let mut am = ActiveMap::new(16 * 4096, EXT, 2, SECTOR).unwrap();
    let mut disk = BTreeSet::new();
    for ext in 0..2 {
        let u = am.write_start(ext * 4096, 4096).unwrap();
        satisfy(&mut am, u, &mut disk);
        let _ = am
            .write_complete(ext * 4096, 4096, WriteOutcome::Replicated)
            .unwrap();
    }
    assert_eq!(disk, BTreeSet::from([0, 1]));
    let before = am.generation();
    let u = am.write_start(5 * 4096, 10).unwrap();
    // One generation for both the new bit and the evicted one.
    assert_eq!(am.generation(), before + 1);
    assert_eq!(
        u,
        MapUpdate::Write {
            generation: before + 1
        }
    );
    satisfy(&mut am, u, &mut disk);
    assert_eq!(disk, BTreeSet::from([1, 5]));
}

#[test]
fn failed_write_becomes_sync_owed() {
    let mut am = ActiveMap::new(16 * 4096, EXT, 0, SECTOR).unwrap();
    let mut disk = BTreeSet::new();
    let u = am.write_start(4096 - 512, 1024).unwrap(); // spans extents 0 and 1
    satisfy(&mut am, u, &mut disk);
    assert_eq!(am.dirty_extents(), 2);
    let u = am
        .write_complete(4096 - 512, 1024, WriteOutcome::NotReplicated)
        .unwrap();
    assert_eq!(u, MapUpdate::None, "already on disk, nothing to clear");
    assert!(am.is_sync_owed(0) && am.is_sync_owed(1));
    assert_eq!(am.dirty_bytes(), 8192);
    assert_eq!(am.next_sync_extent(0), Some(0));
    assert_eq!(am.next_sync_extent(1), Some(1));
    assert_eq!(am.next_sync_extent(2), None);
    assert!(!am.is_synced(0, 1).unwrap());
    assert!(am.is_synced(8192, 4096).unwrap());
    let u = am.extent_synced(0).unwrap();
    assert!(matches!(u, MapUpdate::Lazy { .. }));
    assert!(!am.is_dirty(0));
    assert!(am.is_dirty(1));
}

#[test]
fn sync_does_not_clean_an_extent_with_a_pending_write() {
    let mut am = ActiveMap::new(16 * 4096, EXT, 0, SECTOR).unwrap();
    let _ = am.need_sync(0, 4096).unwrap();
    let _ = am.write_start(512, 512).unwrap();
    let _ = am.extent_synced(0).unwrap();
    assert!(am.is_dirty(0));
    assert_eq!(am.ondisk_image()[0], 1);
    let _ = am
        .write_complete(512, 512, WriteOutcome::Replicated)
        .unwrap();
    assert!(!am.is_dirty(0));
}

#[test]
fn last_partial_extent_and_range_edges() {
    let datasize = 3 * 4096 + 1024;
    let mut am = ActiveMap::new(datasize, EXT, 0, SECTOR).unwrap();
    assert_eq!(am.write_start(datasize, 0).unwrap(), MapUpdate::None);
    assert_eq!(am.write_start(0, 0).unwrap(), MapUpdate::None);
    assert!(matches!(
        am.write_start(datasize, 1),
        Err(ActiveMapError::OutOfRange { .. })
    ));
    assert!(matches!(
        am.write_start(u64::MAX, 2),
        Err(ActiveMapError::OutOfRange { .. })
    ));
    let _ = am.write_start(datasize - 512, 512).unwrap();
    assert_eq!(am.dirty_bytes(), 1024);
    assert_eq!(am.sync_owed_bytes(), 0);
    let _ = am.need_sync(0, datasize).unwrap();
    assert_eq!(am.dirty_bytes(), datasize);
    assert_eq!(
        am.sync_owed_bytes(),
        datasize,
        "the short last extent counts its real size"
    );
    assert_eq!(am.dirty_extents(), 4);
    let chunks: Vec<_> = am.sync_chunks(3).collect();
    assert_eq!(chunks, vec![(3 * 4096, 1024)]);
    assert_eq!(am.sync_chunks(4).count(), 0);
    assert!(matches!(
        am.extent_synced(4),
        Err(ActiveMapError::NoSuchExtent { ext: 4, count: 4 })
    ));
}

#[test]
fn sync_chunks_are_bounded() {
    let am = ActiveMap::new(5 << 20, 4 << 20, 0, 512).unwrap();
    let chunks: Vec<_> = am.sync_chunks(0).collect();
    assert_eq!(chunks.len(), 4);
    assert!(chunks.iter().all(|&(_, len)| len == SYNC_CHUNK));
    let chunks: Vec<_> = am.sync_chunks(1).collect();
    assert_eq!(chunks, vec![(4 << 20, 1 << 20)]);
}

#[test]
fn unmatched_completion_is_refused_and_changes_nothing() {
    let mut am = ActiveMap::new(16 * 4096, EXT, 0, SECTOR).unwrap();
    let _ = am.write_start(0, 4096).unwrap();
    let err = am.write_complete(0, 8192, WriteOutcome::Replicated);
    assert_eq!(
        err,
        Err(ActiveMapError::NotPending {
            offset: 0,
            len: 8192
        })
    );
    assert_eq!(am.pending_writes(0), 1);
}

#[test]
fn load_and_merge() {
    let mut am = ActiveMap::new(20 * 4096, EXT, 4, SECTOR).unwrap();
    // 20 extents need 3 bytes; bits past extent 19 are ignored.
    assert_eq!(
        am.load(&[0xff, 0]),
        Err(ActiveMapError::MapTooShort { got: 2, need: 3 })
    );
    let u = am.load(&[0b1000_0001, 0, 0xf8]).unwrap();
    assert_eq!(u, MapUpdate::Write { generation: 1 });
    assert_eq!(am.sync_owed_extents(), 3);
    assert!(am.is_sync_owed(0) && am.is_sync_owed(7) && am.is_sync_owed(19));
    assert_eq!(am.merge(&[]).unwrap(), MapUpdate::None);
    assert!(am.merge(&[1]).is_err());
    let u = am.merge(&[0b1000_0011, 0, 0, 0]).unwrap();
    assert_eq!(u, MapUpdate::Write { generation: 2 });
    assert_eq!(am.sync_owed_extents(), 4);
    assert_eq!(bits_of(&am.ondisk_image()), BTreeSet::from([0, 1, 7, 19]));
    let _ = am.clear_all();
    assert_eq!(am.dirty_bytes(), 0);
    let _ = am.set_all();
    assert_eq!(am.dirty_bytes(), 20 * 4096);
}

#[test]
fn map_write_protocol_is_serialised() {
    let mut am = ActiveMap::new(16 * 4096, EXT, 4, SECTOR).unwrap();
    assert!(am.begin_map_write().is_none(), "nothing to write");
    let _ = am.write_start(0, 1).unwrap();
    let first = am.begin_map_write().unwrap();
    assert!(am.begin_map_write().is_none(), "one writer at a time");
    let u = am.write_start(4096, 1).unwrap();
    assert_eq!(u, MapUpdate::Write { generation: 2 });
    assert_eq!(
        am.mark_written(2),
        Err(ActiveMapError::NotWriting(2)),
        "only the generation being written can be marked"
    );
    am.abandon_map_write(first.generation).unwrap();
    assert_eq!(am.written_generation(), 0);
    let second = am.begin_map_write().unwrap();
    assert_eq!(second.generation, 2);
    am.mark_written(2).unwrap();
    assert_eq!(am.write_start(0, 4096 * 2).unwrap(), MapUpdate::None);
}

// ---------------------------------------------------------------- the model

/// The naive model: pending counts per extent, the sync-owed set, the LRU as a vector
/// (most recent first).
#[derive(Debug)]
struct Model {
    datasize: u64,
    keepdirty: usize,
    pending: Vec<u32>,
    owed: BTreeSet<u64>,
    lru: Vec<u64>,
}

impl Model {
    fn new(datasize: u64, keepdirty: usize) -> Model {
        let n = datasize.div_ceil(u64::from(EXT)) as usize;
        Model {
            datasize,
            keepdirty,
            pending: vec![0; n],
            owed: BTreeSet::new(),
            lru: Vec::new(),
        }
    }
    fn exts(&self, off: u64, len: u64) -> Vec<u64> {
        if len == 0 {
            return vec![];
        }
        (off / u64::from(EXT)..=(off + len - 1) / u64::from(EXT)).collect()
    }
    fn start(&mut self, off: u64, len: u64) {
        for e in self.exts(off, len) {
            self.pending[e as usize] += 1;
            self.lru.retain(|&x| x != e);
            if self.keepdirty > 0 {
                self.lru.insert(0, e);
                self.lru.truncate(self.keepdirty);
            }
        }
    }
    fn complete(&mut self, off: u64, len: u64, ok: bool) {
        for e in self.exts(off, len) {
            self.pending[e as usize] -= 1;
            if !ok {
                self.owed.insert(e);
            }
        }
    }
    fn dirty(&self, e: u64) -> bool {
        self.pending[e as usize] > 0 || self.owed.contains(&e)
    }
    fn must_be_on_disk(&self) -> BTreeSet<u64> {
        (0..self.pending.len() as u64)
            .filter(|&e| self.dirty(e))
            .collect()
    }
    fn image(&self) -> BTreeSet<u64> {
        let mut set = self.must_be_on_disk();
        set.extend(self.lru.iter().copied());
        set
    }
    fn dirty_bytes(&self) -> u64 {
        (0..self.pending.len() as u64)
            .filter(|&e| self.dirty(e))
            .map(|e| (self.datasize - e * u64::from(EXT)).min(u64::from(EXT)))
            .sum()
    }
    fn load(&mut self, bytes: &[u8]) {
        let n = self.pending.len() as u64;
        self.owed
            .extend(bits_of(bytes).into_iter().filter(|&e| e < n));
    }
}

fn check(am: &ActiveMap, model: &Model, disk: &BTreeSet<u64>) -> Result<(), TestCaseError> {
    let need = model.must_be_on_disk();
    // (a) the disk covers every pending write and sync debt.
    prop_assert!(need.is_subset(disk), "disk {:?} misses {:?}", disk, need);
    // (b) nothing pending or owed is reported clean.
    for e in 0..model.pending.len() as u64 {
        prop_assert_eq!(am.is_dirty(e), model.dirty(e), "extent {}", e);
        prop_assert_eq!(am.pending_writes(e), model.pending[e as usize]);
    }
    // (d) the counts agree with the model.
    prop_assert_eq!(am.dirty_bytes(), model.dirty_bytes());
    prop_assert_eq!(am.dirty_extents(), need.len() as u64);
    prop_assert_eq!(am.sync_owed_extents(), model.owed.len() as u64);
    prop_assert_eq!(am.next_sync_extent(0), model.owed.first().copied());
    // The desired image is exactly pending ∪ owed ∪ LRU.
    prop_assert_eq!(bits_of(&am.ondisk_image()), model.image());
    Ok(())
}

#[derive(Debug, Clone)]
enum Step {
    Start(u64, u64),
    Complete(usize, bool),
    NeedSync(u64, u64),
    Synced(u64),
    Load(Vec<u8>),
    Merge(Vec<u8>),
    Lazy,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (any::<u64>(), any::<u64>()).prop_map(|(a, b)| Step::Start(a, b)),
        4 => (any::<usize>(), any::<bool>()).prop_map(|(i, ok)| Step::Complete(i, ok)),
        1 => (any::<u64>(), any::<u64>()).prop_map(|(a, b)| Step::NeedSync(a, b)),
        2 => any::<u64>().prop_map(Step::Synced),
        1 => proptest::collection::vec(any::<u8>(), 3).prop_map(Step::Load),
        1 => proptest::collection::vec(prop_oneof![Just(0u8), any::<u8>()], 3)
            .prop_map(Step::Merge),
        1 => Just(Step::Lazy),
    ]
}

/// Maps raw numbers to a range inside the device: up to three extents long.
fn range(datasize: u64, a: u64, b: u64) -> (u64, u64) {
    let off = a % (datasize + 1);
    let len = b % ((datasize - off).min(3 * u64::from(EXT)) + 1);
    (off, len)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Every operation, following the map-write protocol synchronously.
    #[test]
    fn matches_model(
        extents in 1u64..20,
        tail in 0u64..u64::from(EXT),
        keepdirty in 0usize..5,
        steps in proptest::collection::vec(step(), 1..80),
    ) {
        let datasize = (extents - 1) * u64::from(EXT) + tail.max(1);
        let mut am = ActiveMap::new(datasize, EXT, keepdirty as u32, SECTOR).unwrap();
        let mut model = Model::new(datasize, keepdirty);
        let mut disk = BTreeSet::new();
        let mut inflight: Vec<(u64, u64)> = Vec::new();
        for step in steps {
            match step {
                Step::Start(a, b) => {
                    let (off, len) = range(datasize, a, b);
                    let u = am.write_start(off, len).unwrap();
                    satisfy(&mut am, u, &mut disk);
                    model.start(off, len);
                    inflight.push((off, len));
                }
                Step::Complete(i, ok) if !inflight.is_empty() => {
                    let (off, len) = inflight.swap_remove(i % inflight.len());
                    let u = am.write_complete(off, len, WriteOutcome::from_replicated(ok)).unwrap();
                    prop_assert!(!matches!(u, MapUpdate::Write { .. }), "urgent update {:?}", u);
                    model.complete(off, len, ok);
                }
                Step::Complete(..) => {}
                Step::NeedSync(a, b) => {
                    let (off, len) = range(datasize, a, b);
                    let u = am.need_sync(off, len).unwrap();
                    satisfy(&mut am, u, &mut disk);
                    model.owed.extend(model.exts(off, len));
                }
                Step::Synced(e) => {
                    let e = e % model.pending.len() as u64;
                    let u = am.extent_synced(e).unwrap();
                    prop_assert!(!matches!(u, MapUpdate::Write { .. }), "urgent update {:?}", u);
                    model.owed.remove(&e);
                }
                Step::Load(bytes) => {
                    let u = am.load(&bytes).unwrap();
                    satisfy(&mut am, u, &mut disk);
                    model.load(&bytes);
                }
                Step::Merge(bytes) => {
                    let u = am.merge(&bytes).unwrap();
                    satisfy(&mut am, u, &mut disk);
                    model.load(&bytes);
                }
                Step::Lazy => flush_lazy(&mut am, &mut disk),
            }
            check(&am, &model, &disk)?;
        }
    }

    /// (c) with a hot set no larger than keepdirty, after each hot extent has been written
    /// once, no further map write is requested and the image never changes.
    #[test]
    fn hot_set_needs_no_map_writes(
        keepdirty in 1usize..8,
        hot_seed in proptest::collection::btree_set(0u64..32, 1..8),
        writes in proptest::collection::vec((any::<usize>(), 0u64..4096, any::<bool>(), any::<bool>()), 1..100),
    ) {
        let hot: Vec<u64> = hot_seed.into_iter().take(keepdirty).collect();
        let mut am = ActiveMap::new(32 * u64::from(EXT), EXT, keepdirty as u32, SECTOR).unwrap();
        let mut disk = BTreeSet::new();
        for &e in &hot {
            let u = am.write_start(e * u64::from(EXT), 512).unwrap();
            satisfy(&mut am, u, &mut disk);
            let _ = am.write_complete(e * u64::from(EXT), 512, WriteOutcome::Replicated).unwrap();
        }
        flush_lazy(&mut am, &mut disk);
        let generation = am.generation();
        for (i, off, ok, sync) in writes {
            let e = hot[i % hot.len()];
            let off = e * u64::from(EXT) + off;
            let len = (e + 1) * u64::from(EXT) - off;
            prop_assert_eq!(am.write_start(off, len).unwrap(), MapUpdate::None);
            prop_assert_eq!(am.write_complete(off, len, WriteOutcome::from_replicated(ok)).unwrap(), MapUpdate::None);
            if sync {
                prop_assert_eq!(am.extent_synced(e).unwrap(), MapUpdate::None);
            }
            prop_assert_eq!(am.generation(), generation);
        }
    }
}

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use hast_core::metadata::{Layout, Metadata, Role, METADATA_SIZE};

use super::*;

const MIB: u64 = 1 << 20;

/// A sparse temporary file of `size` bytes.
fn image(dir: &tempfile::TempDir, size: u64) -> PathBuf {
    let path = dir.path().join("r0.img");
    File::create(&path).unwrap().set_len(size).unwrap();
    path
}

/// A provider initialised like `hastctl create` with 64 KiB extents.
fn created(path: &Path) -> Metadata {
    let provider = Provider::open(path, Access::ReadWrite).unwrap();
    let layout = Layout::compute(provider.media_size(), 64 * 1024, provider.sector_size()).unwrap();
    let md = Metadata::new("r0", layout, 64).unwrap();
    write_bitmap(&provider, md.layout(), &[]).unwrap();
    write_metadata(&provider, &md).unwrap();
    provider.flush().unwrap();
    md
}

#[test]
fn local_store_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<LocalStore>();
    check::<Provider>();
}

#[test]
fn open_regular_file_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let path = image(&dir, 8 * MIB + 100);
    let p = Provider::open(&path, Access::ReadOnly).unwrap();
    assert_eq!(p.media_size(), 8 * MIB + 100);
    assert_eq!(p.sector_size(), 512);
    assert!(!p.is_block_device());
    assert_eq!(p.path(), path);
}

#[test]
fn open_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = Provider::open(&dir.path().join("nope"), Access::ReadOnly).unwrap_err();
    assert!(matches!(missing, StorageError::Open { .. }), "{missing}");
    assert_eq!(missing.exit_code(), 66);
    let dir_err = Provider::open(dir.path(), Access::ReadWrite).unwrap_err();
    assert!(
        matches!(dir_err, StorageError::NotAProvider { .. }),
        "{dir_err}"
    );
}

#[test]
fn read_write_opens_exclude_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let path = image(&dir, MIB);
    let first = Provider::open(&path, Access::ReadWrite).unwrap();
    let second = Provider::open(&path, Access::ReadWrite).unwrap_err();
    assert!(matches!(second, StorageError::Busy { .. }));
    assert_eq!(
        second.to_string(),
        format!(
            "provider {} is in use (locked by another hastd or hastctl)",
            path.display()
        )
    );
    assert_eq!(second.exit_code(), 75);
    // dump must work while hastd holds the provider.
    Provider::open(&path, Access::ReadOnly).unwrap();
    drop(first);
    Provider::open(&path, Access::ReadWrite).unwrap();
}

#[test]
fn a_lock_held_elsewhere_makes_open_busy() {
    let dir = tempfile::tempdir().unwrap();
    let path = image(&dir, MIB);
    let holder = File::open(&path).unwrap();
    rustix::fs::flock(&holder, rustix::fs::FlockOperation::NonBlockingLockShared).unwrap();
    assert!(matches!(
        Provider::open(&path, Access::ReadWrite),
        Err(StorageError::Busy { .. })
    ));
}

#[test]
fn provider_io_is_bounded_by_the_media() {
    let dir = tempfile::tempdir().unwrap();
    let path = image(&dir, MIB);
    let p = Provider::open(&path, Access::ReadWrite).unwrap();
    p.write_all_at(b"abc", MIB - 3).unwrap();
    let mut buf = [0u8; 3];
    p.read_exact_at(&mut buf, MIB - 3).unwrap();
    assert_eq!(&buf, b"abc");
    let err = p.write_all_at(b"abcd", MIB - 3).unwrap_err();
    assert!(matches!(err, StorageError::OutOfBounds { .. }), "{err}");
    assert!(p.read_exact_at(&mut buf, u64::MAX - 1).is_err());
    assert!(p.discard(MIB, 1).is_err());
    // Nothing grew the file.
    assert_eq!(std::fs::metadata(&path).unwrap().len(), MIB);
}

#[test]
fn read_only_provider_cannot_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = image(&dir, MIB);
    let p = Provider::open(&path, Access::ReadOnly).unwrap();
    assert!(matches!(
        p.write_all_at(b"x", 0),
        Err(StorageError::Io { op: Op::Write, .. })
    ));
}

#[test]
fn metadata_and_bitmap_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = image(&dir, 64 * MIB);
    let md = created(&path);
    let p = Provider::open(&path, Access::ReadOnly).unwrap();
    assert_eq!(read_metadata(&p).unwrap(), md);
    let map = read_bitmap(&p, md.layout()).unwrap();
    assert_eq!(map.len() as u64, md.layout().bitmap_size());
    assert!(map.iter().all(|&b| b == 0));
}

#[test]
fn metadata_errors_name_the_provider() {
    let dir = tempfile::tempdir().unwrap();
    let path = image(&dir, MIB);
    let p = Provider::open(&path, Access::ReadWrite).unwrap();
    let err = read_metadata(&p).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "provider {}: not a hast provider (no metadata found)",
            path.display()
        )
    );
    assert_eq!(err.exit_code(), 65);
    let tiny = dir.path().join("tiny");
    File::create(&tiny).unwrap().set_len(100).unwrap();
    let p = Provider::open(&tiny, Access::ReadOnly).unwrap();
    assert!(matches!(
        read_metadata(&p),
        Err(StorageError::Metadata { .. })
    ));
}

#[test]
fn short_bitmap_is_zero_padded_and_long_one_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = image(&dir, 64 * MIB);
    let md = created(&path);
    let p = Provider::open(&path, Access::ReadWrite).unwrap();
    let area = md.layout().bitmap_size() as usize;
    write_bitmap(&p, md.layout(), &vec![0xff; area]).unwrap();
    write_bitmap(&p, md.layout(), &[0x01]).unwrap();
    let map = read_bitmap(&p, md.layout()).unwrap();
    assert_eq!(map[0], 1);
    assert!(map[1..].iter().all(|&b| b == 0));
    assert!(matches!(
        write_bitmap(&p, md.layout(), &vec![0; area + 1]),
        Err(StorageError::BitmapTooLarge { .. })
    ));
}

#[test]
fn local_store_maps_and_bounds_device_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let path = image(&dir, 8 * MIB);
    let md = created(&path);
    let (store, read) = LocalStore::open(&path, "r0", true).unwrap();
    assert_eq!(read, md);
    assert_eq!(store.datasize(), md.datasize());
    assert_eq!(store.extentsize(), 64 * 1024);
    assert_eq!(store.sector_size(), 512);

    store.write(0, b"first").unwrap();
    let end = store.datasize();
    store.write(end - 4, b"last").unwrap();
    let mut buf = [0u8; 5];
    store.read(0, &mut buf).unwrap();
    assert_eq!(&buf, b"first");
    store.flush().unwrap();

    // Device offset 0 is provider offset `offset`: the header is untouched.
    let raw = std::fs::read(&path).unwrap();
    let off = md.offset() as usize;
    assert_eq!(&raw[off..off + 5], b"first");
    assert_eq!(&raw[raw.len() - 4..], b"last");
    assert_eq!(Metadata::decode(&raw[..METADATA_SIZE]).unwrap(), md);

    for (offset, len) in [(end, 1), (end - 3, 4), (u64::MAX, 1), (1, u64::MAX)] {
        let err = store.discard(offset, len).unwrap_err();
        assert!(
            matches!(
                err,
                StorageError::OutOfBounds {
                    area: "data area",
                    ..
                }
            ),
            "{err}"
        );
        assert!(store.write_zeroes(offset, len).is_err());
    }
    assert!(store.write(end - 3, b"four").is_err());
    assert!(store.read(end, &mut [0u8; 1]).is_err());
    // Zero-length requests at the very end are in bounds.
    store.write(end, b"").unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), raw);
}

#[test]
fn local_store_refuses_other_resources_and_shrunk_providers() {
    let dir = tempfile::tempdir().unwrap();
    let path = image(&dir, 8 * MIB);
    created(&path);
    let err = LocalStore::open(&path, "other", false).unwrap_err();
    assert!(
        err.to_string()
            .ends_with("provider belongs to resource 'r0', not 'other'"),
        "{err}"
    );
    File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(4 * MIB)
        .unwrap();
    assert!(matches!(
        LocalStore::open(&path, "r0", false),
        Err(StorageError::TooSmall { .. })
    ));
}

#[test]
fn local_store_metadata_and_bitmap_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = image(&dir, 8 * MIB);
    created(&path);
    let (store, mut md) = LocalStore::open(&path, "r0", true).unwrap();
    md.localcnt = 3;
    md.resuid = 42;
    md.prevrole = Role::Primary;
    store.write_metadata(&md).unwrap();
    store.write_bitmap(&[0b1000_0001]).unwrap();
    assert_eq!(store.read_bitmap().unwrap()[0], 0b1000_0001);
    drop(store);
    let (store, again) = LocalStore::open(&path, "r0", false).unwrap();
    assert_eq!(again, md);

    // A header with another layout is never written through the store.
    let other = Layout::compute(8 * MIB, 2 * MIB, 512).unwrap();
    let foreign = Metadata::new("r0", other, 64).unwrap();
    assert!(matches!(
        store.write_metadata(&foreign),
        Err(StorageError::LayoutChanged { .. })
    ));
}

#[test]
fn discard_punches_a_hole() {
    let dir = tempfile::tempdir().unwrap();
    let path = image(&dir, 8 * MIB);
    created(&path);
    let (store, _) = LocalStore::open(&path, "r0", false).unwrap();
    store.write(0, &vec![0xaa; 4 * MIB as usize]).unwrap();
    store.flush().unwrap();
    let before = std::fs::metadata(&path).unwrap().blocks();
    match store.discard(MIB, 2 * MIB) {
        Ok(()) => {
            let after = std::fs::metadata(&path).unwrap().blocks();
            assert!(after < before, "blocks {before} -> {after}");
        }
        // tmpfs and ext4 punch holes; a file system that does not says so, typed.
        Err(StorageError::Unsupported {
            op: Op::Discard, ..
        }) => {}
        Err(err) => panic!("{err}"),
    }
    let mut buf = vec![0u8; 3 * MIB as usize];
    store.read(MIB / 2, &mut buf).unwrap();
    let half = MIB as usize / 2;
    assert!(buf[..half].iter().all(|&b| b == 0xaa));
    assert!(buf[half..half + 2 * MIB as usize].iter().all(|&b| b == 0));
    assert!(buf[half + 2 * MIB as usize..].iter().all(|&b| b == 0xaa));
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 8 * MIB);
}

#[test]
fn write_zeroes_zeroes_exactly_the_range() {
    let dir = tempfile::tempdir().unwrap();
    let path = image(&dir, 8 * MIB);
    created(&path);
    let (store, _) = LocalStore::open(&path, "r0", false).unwrap();
    store.write(0, &[0x55; 8192]).unwrap();
    store.write_zeroes(100, 5000).unwrap();
    let mut buf = [0u8; 8192];
    store.read(0, &mut buf).unwrap();
    assert!(buf[..100].iter().all(|&b| b == 0x55));
    assert!(buf[100..5100].iter().all(|&b| b == 0));
    assert!(buf[5100..].iter().all(|&b| b == 0x55));
}

#[test]
fn slow_zeroing_covers_ranges_larger_than_one_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let path = image(&dir, 8 * MIB);
    let p = Provider::open(&path, Access::ReadWrite).unwrap();
    p.write_all_at(&vec![0x77; 4 * MIB as usize], 0).unwrap();
    p.write_zeroes_slowly(10, 3 * MIB).unwrap();
    let mut buf = vec![0u8; 4 * MIB as usize];
    p.read_exact_at(&mut buf, 0).unwrap();
    assert!(buf[..10].iter().all(|&b| b == 0x77));
    assert!(buf[10..10 + 3 * MIB as usize].iter().all(|&b| b == 0));
    assert!(buf[10 + 3 * MIB as usize..].iter().all(|&b| b == 0x77));
}

/// Opt-in: `HAST_TEST_BLOCKDEV=/dev/loopN` names a scratch block device (its contents
/// are overwritten). Checks the ioctl sizes, O_EXCL + flock exclusion and discard.
#[test]
fn scratch_block_device() {
    let Some(dev) = std::env::var_os("HAST_TEST_BLOCKDEV") else {
        return;
    };
    let dev = PathBuf::from(dev);
    let p = Provider::open(&dev, Access::ReadWrite).unwrap();
    assert!(p.is_block_device());
    assert!(p.media_size() > 0);
    assert!(p.sector_size().is_power_of_two());
    assert!(matches!(
        Provider::open(&dev, Access::ReadWrite),
        Err(StorageError::Claimed { .. } | StorageError::Busy { .. })
    ));
    Provider::open(&dev, Access::ReadOnly).unwrap();
    drop(p);
    let md = created(&dev);
    let (store, _) = LocalStore::open(&dev, "r0", true).unwrap();
    store.write(0, &[0xaa; 8192]).unwrap();
    match store.discard(0, 4096) {
        Ok(()) | Err(StorageError::Unsupported { .. }) => {}
        Err(err) => panic!("{err}"),
    }
    store.write_zeroes(4096, 4096).unwrap();
    let mut buf = [0u8; 8192];
    store.read(0, &mut buf).unwrap();
    assert!(buf[4096..].iter().all(|&b| b == 0));
    assert_eq!(store.datasize(), md.datasize());
}

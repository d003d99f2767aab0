//! `hastctl dump [--json] [all | name...]`: prints the on-disk metadata of local
//! components (hast-reference.md §3.5). Opens providers read-only and without a lock,
//! so it works while hastd runs.
//!
//! Text output is FreeBSD's, field for field. `--json` prints one JSON array with the
//! keys documented in `docs/on-disk-format.md` ("hastctl dump"); a resource that fails
//! is left out of it and reported on stderr.
//!
//! Exit code: the code of the first resource that failed, 0 if all succeeded. Unknown
//! resource, missing or corrupt metadata, metadata of another resource ⇒ EX_DATAERR
//! (65; FreeBSD exits 255 on read failures); provider cannot be opened ⇒ EX_NOINPUT
//! (66); read error ⇒ EX_IOERR (74).

use std::io::{self, Write};
use std::path::PathBuf;

use hast_core::config::{Config, Resource};
use hast_core::metadata::{Metadata, Role};
use hast_core::sysexits;
use hast_core::units::humanize;
use serde::Serialize;

use crate::storage::{self, Access, Provider, StorageError};

/// What `dump` shows for one resource; serialised as one element of the `--json` array.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DumpEntry {
    /// Resource name (as configured, and as stored in the header).
    pub name: String,
    /// Path of the local component.
    pub path: PathBuf,
    /// Metadata format version.
    pub version: u32,
    /// Bytes of user data.
    pub datasize: u64,
    /// Bytes per extent.
    pub extentsize: u32,
    /// keepdirty.
    pub keepdirty: u32,
    /// Provider offset of the user data (FreeBSD's `localoff`).
    pub offset: u64,
    /// Sector size recorded at create time.
    pub sectorsize: u32,
    /// Resource id; 0 = fresh.
    pub resuid: u64,
    /// Local write generation.
    pub localcnt: u64,
    /// Peer's write generation as last seen.
    pub remotecnt: u64,
    /// Role at the last metadata write.
    pub prevrole: Role,
    /// What this node knows is missing from its copy: `consistent`, or why not.
    pub datastate: String,
    /// Extents marked dirty in the on-disk activemap.
    pub dirty_extents: u64,
}

/// Prints the metadata of each named resource (`all` or none: every one); returns the
/// exit code.
pub fn run(config: &Config, names: &[String], json: bool) -> u8 {
    run_to(
        config,
        names,
        json,
        &mut io::stdout().lock(),
        &mut io::stderr().lock(),
    )
}

/// [`run`] writing the dump to `out` and messages to `err`.
pub fn run_to(
    config: &Config,
    names: &[String],
    json: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    let mut code = sysexits::EX_OK;
    let mut fail = |name: &str, message: String, exit: u8| {
        let _ = writeln!(err, "hastctl: {name}: {message}");
        if code == sysexits::EX_OK {
            code = exit;
        }
    };
    let all = names.is_empty() || (names.len() == 1 && names[0] == "all");
    let selected: Vec<(&str, Option<&Resource>)> = if all {
        config
            .resources
            .iter()
            .map(|r| (r.name.as_str(), Some(r)))
            .collect()
    } else {
        names
            .iter()
            .map(|n| (n.as_str(), config.resource(n)))
            .collect()
    };
    let mut entries = Vec::new();
    for (name, resource) in selected {
        let Some(resource) = resource else {
            fail(name, "unknown resource".to_string(), sysexits::EX_DATAERR);
            continue;
        };
        match dump_one(resource) {
            Ok(entry) if json => entries.push(entry),
            Ok(entry) => {
                if let Err(e) = out.write_all(format_text(&entry).as_bytes()) {
                    fail(
                        name,
                        format!("cannot write output: {e}"),
                        sysexits::EX_IOERR,
                    );
                }
            }
            Err(e) => fail(name, e.to_string(), e.exit_code()),
        }
    }
    if json {
        let written = serde_json::to_string_pretty(&entries)
            .map_err(io::Error::from)
            .and_then(|text| writeln!(out, "{text}"));
        if let Err(e) = written {
            let _ = writeln!(err, "hastctl: cannot write output: {e}");
            if code == sysexits::EX_OK {
                code = sysexits::EX_IOERR;
            }
        }
    }
    code
}

/// Reads the metadata and the activemap of one resource's local component.
pub fn dump_one(resource: &Resource) -> Result<DumpEntry, StorageError> {
    let provider = Provider::open(&resource.local, Access::ReadOnly)?;
    let metadata = storage::read_metadata(&provider)?;
    metadata
        .check_resource(&resource.name)
        .map_err(|source| StorageError::Metadata {
            path: resource.local.clone(),
            source,
        })?;
    let bitmap = storage::read_bitmap(&provider, metadata.layout())?;
    Ok(entry(&metadata, &resource.local, &bitmap))
}

fn entry(md: &Metadata, path: &std::path::Path, bitmap: &[u8]) -> DumpEntry {
    DumpEntry {
        name: md.name().to_string(),
        path: path.to_path_buf(),
        version: md.version(),
        datastate: md.datastate.to_string(),
        datasize: md.datasize(),
        extentsize: md.extentsize(),
        keepdirty: md.keepdirty(),
        offset: md.offset(),
        sectorsize: md.sectorsize(),
        resuid: md.resuid,
        localcnt: md.localcnt,
        remotecnt: md.remotecnt,
        prevrole: md.prevrole,
        dirty_extents: count_dirty(bitmap, md.layout().nextents()),
    }
}

/// Set bits among the first `nextents` (LSB-first within each byte). Bits past the last
/// extent belong to no data and are not counted.
fn count_dirty(bitmap: &[u8], nextents: u64) -> u64 {
    let full = usize::try_from(nextents / 8)
        .unwrap_or(usize::MAX)
        .min(bitmap.len());
    let mut count: u64 = bitmap[..full]
        .iter()
        .map(|b| u64::from(b.count_ones()))
        .sum();
    let rest = (nextents % 8) as u32;
    if rest != 0 {
        if let Some(byte) = bitmap.get(full) {
            count += u64::from((byte & ((1u8 << rest) - 1)).count_ones());
        }
    }
    count
}

/// FreeBSD's text layout: `resource:` at column 0, then four-space indented fields.
pub fn format_text(e: &DumpEntry) -> String {
    format!(
        "resource: {name}\n    datasize: {datasize} ({dh})\n    extentsize: {extentsize} ({eh})\n    \
         keepdirty: {keepdirty}\n    localoff: {offset}\n    resuid: {resuid}\n    \
         localcnt: {localcnt}\n    remotecnt: {remotecnt}\n    prevrole: {prevrole}\n",
        name = e.name,
        datasize = e.datasize,
        dh = humanize(e.datasize),
        extentsize = e.extentsize,
        eh = humanize(u64::from(e.extentsize)),
        keepdirty = e.keepdirty,
        offset = e.offset,
        resuid = e.resuid,
        localcnt = e.localcnt,
        remotecnt = e.remotecnt,
        prevrole = e.prevrole,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dirty_count_ignores_bits_past_the_last_extent() {
        assert_eq!(count_dirty(&[0xff, 0xff], 16), 16);
        assert_eq!(count_dirty(&[0xff, 0xff], 11), 11);
        assert_eq!(count_dirty(&[0b0000_0101, 0xf0], 9), 2);
        assert_eq!(count_dirty(&[0xff], 0), 0);
        assert_eq!(count_dirty(&[0x01], 100), 1);
    }

    #[test]
    fn text_matches_freebsd_layout() {
        let entry = DumpEntry {
            name: "shared".into(),
            path: "/dev/vdb".into(),
            version: 1,
            datasize: (1 << 30) - 4608,
            extentsize: 2 << 20,
            keepdirty: 64,
            offset: 4608,
            sectorsize: 512,
            resuid: 0,
            localcnt: 0,
            remotecnt: 0,
            prevrole: Role::Init,
            datastate: "consistent".into(),
            dirty_extents: 0,
        };
        assert_eq!(
            format_text(&entry),
            "resource: shared\n    datasize: 1073737216 (1.0G)\n    extentsize: 2097152 (2.0M)\n    \
             keepdirty: 64\n    localoff: 4608\n    resuid: 0\n    localcnt: 0\n    remotecnt: 0\n    \
             prevrole: init\n"
        );
    }
}

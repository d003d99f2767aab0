//! `hastctl create` and `hastctl dump`: through the library with a hand-built config,
//! and as processes (`hastctl -c FILE --node a ...`) on temporary files.

// Test helpers outside #[test] functions panic on setup failures on purpose.
#![allow(clippy::unwrap_used)]

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use hast::ctl::create::{self, CreateOptions};
use hast::ctl::dump;
use hast_core::config::{Address, Checksum, Compression, Config, ReplicationMode, Resource};
use hast_core::metadata::{Metadata, METADATA_SIZE};
use serde_json::Value;

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

struct Setup {
    dir: tempfile::TempDir,
    config: Config,
}

impl Setup {
    /// Resources `r0`, `r1`, ... each on a sparse file of the given size (`None`: the
    /// file does not exist).
    fn new(sizes: &[Option<u64>]) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let resources = sizes
            .iter()
            .enumerate()
            .map(|(i, size)| {
                let name = format!("r{i}");
                let local = dir.path().join(format!("{name}.img"));
                if let Some(size) = size {
                    File::create(&local).unwrap().set_len(*size).unwrap();
                }
                resource(&name, local, 7000 + i as u16)
            })
            .collect();
        let config = Config {
            control: Address::Unix(dir.path().join("ctl.sock")),
            pidfile: dir.path().join("hastd.pid"),
            listen: vec![],
            resources,
        };
        Setup { dir, config }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.config.resource(name).unwrap().local.clone()
    }

    fn names(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    fn create(&self, names: &[&str], opts: &CreateOptions) -> (u8, String) {
        let mut err = Vec::new();
        let code = create::run_to(&self.config, &Self::names(names), opts, &mut err);
        (code, String::from_utf8(err).unwrap())
    }

    fn dump(&self, names: &[&str], json: bool) -> (u8, String, String) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = dump::run_to(&self.config, &Self::names(names), json, &mut out, &mut err);
        (
            code,
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
        )
    }

    /// The hast.conf(5) text describing the same resources, for the process tests.
    fn write_conf(&self) -> PathBuf {
        let mut text = String::new();
        for r in &self.config.resources {
            text.push_str(&format!(
                "resource {} {{\n\ton a {{ local {} remote 127.0.0.1:{} }}\n\t\
                 on b {{ local {}.b remote 127.0.0.1:{} }}\n}}\n",
                r.name,
                r.local.display(),
                r.remote_text,
                r.local.display(),
                r.remote_text,
            ));
        }
        let path = self.dir.path().join("hast.conf");
        std::fs::write(&path, text).unwrap();
        path
    }
}

fn resource(name: &str, local: PathBuf, port: u16) -> Resource {
    Resource {
        name: name.to_string(),
        provname: name.to_string(),
        local,
        remote: Some(Address::Tcp {
            family: hast_core::config::Family::Any,
            host: "127.0.0.1".into(),
            port,
        }),
        remote_text: port.to_string(),
        source: None,
        source_text: None,
        replication: ReplicationMode::Memsync,
        checksum: Checksum::None,
        compression: Compression::Hole,
        timeout: 20,
        syncrate: 0,
        authkey: None,
        exec: None,
        fence: None,
        fence_timeout: 60,
        metaflush: true,
        export: Address::Unix(PathBuf::from(format!("/run/hast/{name}.sock"))),
        line: 1,
    }
}

fn header(path: &Path) -> [u8; METADATA_SIZE] {
    let mut block = [0u8; METADATA_SIZE];
    File::open(path)
        .unwrap()
        .read_exact_at(&mut block, 0)
        .unwrap();
    block
}

fn flip_byte(path: &Path, at: u64) {
    let file = File::options().read(true).write(true).open(path).unwrap();
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, at).unwrap();
    file.write_all_at(&[byte[0] ^ 0x40], at).unwrap();
}

fn hold_lock(path: &Path) -> File {
    let file = File::open(path).unwrap();
    rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).unwrap();
    file
}

fn json(out: &str) -> Vec<Value> {
    serde_json::from_str::<Value>(out)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

// ---------------------------------------------------------------------------------
// Through the library.

#[test]
fn create_then_dump_json_on_one_gib() {
    let s = Setup::new(&[Some(GIB)]);
    assert_eq!(
        s.create(&["r0"], &CreateOptions::default()),
        (0, String::new())
    );
    let (code, out, err) = s.dump(&["r0"], true);
    assert_eq!((code, err.as_str()), (0, ""));
    let list = json(&out);
    assert_eq!(list.len(), 1);
    let r = &list[0];
    assert_eq!(r["name"], "r0");
    assert_eq!(r["path"], s.path("r0").to_str().unwrap());
    assert_eq!(r["version"], 1);
    assert_eq!(r["datasize"], GIB - 4608);
    assert_eq!(r["extentsize"], 2 * MIB);
    assert_eq!(r["keepdirty"], 64);
    assert_eq!(r["offset"], 4608);
    assert_eq!(r["sectorsize"], 512);
    assert_eq!(r["resuid"], 0);
    assert_eq!(r["localcnt"], 0);
    assert_eq!(r["remotecnt"], 0);
    assert_eq!(r["prevrole"], "init");
    assert_eq!(r["dirty_extents"], 0);
}

#[test]
fn dump_text_is_freebsds() {
    let s = Setup::new(&[Some(GIB)]);
    s.create(&["r0"], &CreateOptions::default());
    let (code, out, _) = s.dump(&[], false);
    assert_eq!(code, 0);
    assert_eq!(
        out,
        "resource: r0\n    datasize: 1073737216 (1.0G)\n    extentsize: 2097152 (2.0M)\n    \
         keepdirty: 64\n    localoff: 4608\n    resuid: 0\n    localcnt: 0\n    remotecnt: 0\n    \
         prevrole: init\n"
    );
}

#[test]
fn create_options_are_applied() {
    let s = Setup::new(&[Some(GIB)]);
    let opts = CreateOptions {
        extentsize: Some(64 * 1024),
        keepdirty: Some(0),
        mediasize: Some(GIB / 2),
    };
    assert_eq!(s.create(&["r0"], &opts).0, 0);
    let md = Metadata::decode(&header(&s.path("r0"))).unwrap();
    assert_eq!(md.extentsize(), 64 * 1024);
    assert_eq!(md.keepdirty(), 64, "-k 0 means the default");
    // 2^29 - 4096 bytes in 64 KiB extents: 8192 extents, 1024 bitmap bytes.
    assert_eq!(md.offset(), 4096 + 1024);
    assert_eq!(md.layout().end(), GIB / 2);
}

#[test]
fn create_does_not_touch_user_data() {
    let s = Setup::new(&[Some(64 * MIB)]);
    let path = s.path("r0");
    let file = File::options().write(true).open(&path).unwrap();
    file.write_all_at(&[0xa5; 8192], 8192).unwrap();
    // Garbage where the bitmap will go, to see it zeroed.
    file.write_all_at(&[0xff; 512], 4096).unwrap();
    assert_eq!(s.create(&["r0"], &CreateOptions::default()).0, 0);
    let raw = std::fs::read(&path).unwrap();
    assert!(raw[4096..4608].iter().all(|&b| b == 0));
    assert!(raw[8192..16384].iter().all(|&b| b == 0xa5));
}

#[test]
fn non_power_of_two_extent_is_refused() {
    let s = Setup::new(&[Some(GIB)]);
    let opts = CreateOptions {
        extentsize: Some(3 * MIB),
        ..Default::default()
    };
    let (code, err) = s.create(&["r0"], &opts);
    assert_eq!(code, 65);
    assert!(
        err.starts_with("hastctl: r0: ") && err.contains("extent size 3145728 is not a power of 2"),
        "{err}"
    );
    assert!(
        header(&s.path("r0")).iter().all(|&b| b == 0),
        "nothing written"
    );
}

#[test]
fn extent_below_sector_and_too_small_media_are_refused() {
    let s = Setup::new(&[Some(GIB), Some(4096 + 512)]);
    let opts = CreateOptions {
        extentsize: Some(256),
        ..Default::default()
    };
    let (code, err) = s.create(&["r0"], &opts);
    assert_eq!(code, 65);
    assert!(err.contains("less than the sector size 512"), "{err}");
    let (code, err) = s.create(&["r1"], &CreateOptions::default());
    assert_eq!(code, 65);
    assert!(err.contains("too small"), "{err}");
}

#[test]
fn mediasize_larger_than_provider_is_refused() {
    let s = Setup::new(&[Some(GIB)]);
    let opts = CreateOptions {
        mediasize: Some(2 * GIB),
        ..Default::default()
    };
    let (code, err) = s.create(&["r0"], &opts);
    assert_eq!(code, 65);
    assert!(
        err.contains("mediasize 2147483648 is larger than provider"),
        "{err}"
    );
}

#[test]
fn keepdirty_too_large_is_refused() {
    let s = Setup::new(&[Some(GIB)]);
    let opts = CreateOptions {
        keepdirty: Some(1 << 32),
        ..Default::default()
    };
    assert_eq!(s.create(&["r0"], &opts).0, 65);
}

#[test]
fn create_on_missing_file_is_noinput() {
    let s = Setup::new(&[None]);
    let (code, err) = s.create(&["r0"], &CreateOptions::default());
    assert_eq!(code, 66);
    assert!(
        err.starts_with("hastctl: r0: cannot open provider "),
        "{err}"
    );
}

#[test]
fn create_is_refused_while_the_provider_is_locked() {
    let s = Setup::new(&[Some(GIB)]);
    let lock = hold_lock(&s.path("r0"));
    let (code, err) = s.create(&["r0"], &CreateOptions::default());
    assert_eq!(code, 75);
    assert!(
        err.contains("is in use (locked by another hastd or hastctl)"),
        "{err}"
    );
    // dump takes no lock and is not disturbed (no metadata yet: 65).
    assert_eq!(s.dump(&["r0"], false).0, 65);
    drop(lock);
    assert_eq!(s.create(&["r0"], &CreateOptions::default()).0, 0);
}

#[test]
fn unknown_resource_fails_but_others_are_processed() {
    let s = Setup::new(&[Some(GIB), Some(GIB)]);
    let (code, err) = s.create(&["r0", "nope", "r1"], &CreateOptions::default());
    assert_eq!(code, 65);
    assert_eq!(err, "hastctl: nope: unknown resource\n");
    let (code, out, err) = s.dump(&["r0", "nope", "r1"], true);
    assert_eq!(code, 65);
    assert_eq!(err, "hastctl: nope: unknown resource\n");
    let names: Vec<_> = json(&out).iter().map(|r| r["name"].clone()).collect();
    assert_eq!(names, ["r0", "r1"]);
}

#[test]
fn exit_code_is_the_first_failure() {
    let s = Setup::new(&[None, Some(GIB)]);
    let opts = CreateOptions::default();
    let (code, err) = s.create(&["r0", "nope"], &opts);
    assert_eq!(code, 66);
    assert_eq!(err.lines().count(), 2);
}

#[test]
fn corrupt_header_fails_cleanly_and_others_are_dumped() {
    let s = Setup::new(&[Some(64 * MIB), Some(64 * MIB)]);
    assert_eq!(s.create(&["r0", "r1"], &CreateOptions::default()).0, 0);
    flip_byte(&s.path("r0"), 30);
    let (code, out, err) = s.dump(&["all"], false);
    assert_eq!(code, 65);
    assert!(
        err.starts_with(&format!(
            "hastctl: r0: provider {}: metadata checksum mismatch",
            s.path("r0").display()
        )),
        "{err}"
    );
    assert!(err.contains("the header is corrupt"), "{err}");
    assert!(out.starts_with("resource: r1\n"), "{out}");
    assert!(!out.contains("resource: r0"));
}

#[test]
fn dump_of_an_uncreated_provider_says_so() {
    let s = Setup::new(&[Some(GIB)]);
    let (code, out, err) = s.dump(&["r0"], true);
    assert_eq!(code, 65);
    assert_eq!(out.trim(), "[]");
    assert!(
        err.ends_with("not a hast provider (no metadata found)\n"),
        "{err}"
    );
}

#[test]
fn dump_refuses_another_resources_provider() {
    let s = Setup::new(&[Some(GIB), Some(GIB)]);
    s.create(&["r0"], &CreateOptions::default());
    std::fs::copy(s.path("r0"), s.path("r1")).unwrap();
    let (code, _, err) = s.dump(&["r1"], false);
    assert_eq!(code, 65);
    assert!(
        err.contains("provider belongs to resource 'r0', not 'r1'"),
        "{err}"
    );
}

#[test]
fn dump_counts_dirty_extents() {
    let s = Setup::new(&[Some(GIB)]);
    s.create(&["r0"], &CreateOptions::default());
    let file = File::options().write(true).open(s.path("r0")).unwrap();
    file.write_all_at(&[0b0000_0110, 0x80], 4096).unwrap();
    let (_, out, _) = s.dump(&["r0"], true);
    assert_eq!(json(&out)[0]["dirty_extents"], 3);
}

// ---------------------------------------------------------------------------------
// As processes. The config parser (`hast::conf::load`) is written on another branch;
// until it is merged, hastctl cannot read a config and these tests only check that.

fn hastctl(conf: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hastctl"))
        .arg("-c")
        .arg(conf)
        .args(["--node", "a"])
        .args(args)
        .env_remove("HAST_NODE")
        .output()
        .unwrap()
}

/// False (with a note) while `hast::conf::load` is still the stub of this branch.
fn parser_ready(conf: &Path) -> bool {
    let out = hastctl(conf, &["dump", "all"]);
    let stub = String::from_utf8_lossy(&out.stderr).contains("config parser not written yet");
    if stub {
        eprintln!("skipped: hast::conf::load is not merged yet");
    }
    !stub
}

fn code(out: &Output) -> i32 {
    out.status.code().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn process_create_and_dump() {
    let s = Setup::new(&[Some(GIB), Some(GIB)]);
    let conf = s.write_conf();
    if !parser_ready(&conf) {
        return;
    }
    let out = hastctl(&conf, &["create", "r0", "r1"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));

    let out = hastctl(&conf, &["dump", "--json", "r0"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let list = json(&String::from_utf8(out.stdout).unwrap());
    assert_eq!(list[0]["datasize"], GIB - 4608);
    assert_eq!(list[0]["extentsize"], 2 * MIB);
    assert_eq!(list[0]["keepdirty"], 64);
    assert_eq!(list[0]["offset"], 4608);
    assert_eq!(list[0]["localcnt"], 0);
    assert_eq!(list[0]["remotecnt"], 0);
    assert_eq!(list[0]["resuid"], 0);

    let out = hastctl(&conf, &["dump", "all"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("resource: r0\n    datasize: 1073737216 (1.0G)\n"));
    assert!(text.contains("resource: r1\n"));
}

#[test]
fn process_create_refusals() {
    let s = Setup::new(&[Some(GIB), None, Some(GIB)]);
    let conf = s.write_conf();
    if !parser_ready(&conf) {
        return;
    }
    let out = hastctl(&conf, &["create", "-e", "3M", "r0"]);
    assert_eq!(code(&out), 65);
    assert!(stderr(&out).contains("hastctl: r0: "), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not a power of 2"),
        "{}",
        stderr(&out)
    );

    let out = hastctl(&conf, &["create", "-m", "2G", "r0"]);
    assert_eq!(code(&out), 65);
    assert!(
        stderr(&out).contains("larger than provider"),
        "{}",
        stderr(&out)
    );

    let out = hastctl(&conf, &["create", "r1"]);
    assert_eq!(code(&out), 66, "{}", stderr(&out));

    let lock = hold_lock(&s.path("r0"));
    let out = hastctl(&conf, &["create", "r0"]);
    assert_eq!(code(&out), 75, "{}", stderr(&out));
    assert!(stderr(&out).contains("in use"), "{}", stderr(&out));
    drop(lock);

    let out = hastctl(&conf, &["create", "nope", "r2"]);
    assert_eq!(code(&out), 65);
    assert!(stderr(&out).contains("hastctl: nope: unknown resource"));
    let out = hastctl(&conf, &["dump", "r2"]);
    assert_eq!(code(&out), 0, "r2 was created after the unknown name");
}

#[test]
fn process_dump_of_corrupt_header() {
    let s = Setup::new(&[Some(GIB), Some(GIB)]);
    let conf = s.write_conf();
    if !parser_ready(&conf) {
        return;
    }
    assert_eq!(code(&hastctl(&conf, &["create", "r0", "r1"])), 0);
    flip_byte(&s.path("r1"), 60);
    let out = hastctl(&conf, &["dump"]);
    assert_eq!(code(&out), 65);
    let err = stderr(&out);
    assert!(err.contains("hastctl: r1: provider "), "{err}");
    assert!(err.contains(s.path("r1").to_str().unwrap()), "{err}");
    assert!(err.contains("checksum mismatch"), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("resource: r0"));
}

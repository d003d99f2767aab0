//! Parser and resolver tests: placement, inheritance, every error message, robustness.

use std::path::PathBuf;

use proptest::prelude::*;

use super::*;

fn named(name: &str) -> NodeIdentity {
    NodeIdentity::Named(name.to_string())
}

fn ok(text: &str, node: &str) -> Config {
    match parse(text, "hast.conf", &named(node)) {
        Ok(config) => config,
        Err(e) => panic!("unexpected errors:\n{e}\n--- in:\n{text}"),
    }
}

fn errors(text: &str, node: &str) -> Vec<(u32, String)> {
    match parse(text, "hast.conf", &named(node)) {
        Ok(_) => panic!("expected errors in:\n{text}"),
        Err(e) => e
            .diagnostics
            .into_iter()
            .map(|d| (d.line, d.message))
            .collect(),
    }
}

/// Asserts that the only error is on `line` and contains `text`.
fn single_error(config: &str, node: &str, line: u32, text: &str) {
    let errs = errors(config, node);
    assert_eq!(errs.len(), 1, "expected one error, got {errs:#?}");
    assert_eq!(errs[0].0, line, "{errs:#?}");
    assert!(errs[0].1.contains(text), "{:?} lacks {text:?}", errs[0].1);
}

fn tcp(host: &str, port: u16) -> Address {
    Address::Tcp {
        family: Family::Any,
        host: host.to_string(),
        port,
    }
}

const MINIMAL: &str = "resource r0 {\n  local /dev/vdb\n  on a { remote 10.0.0.2 }\n}\n";

#[test]
fn minimal_config_gets_every_default() {
    let config = ok(MINIMAL, "a");
    assert_eq!(config.control, Address::Unix(DEFAULT_CONTROL.into()));
    assert_eq!(config.pidfile, PathBuf::from(DEFAULT_PIDFILE));
    assert_eq!(config.listen, default_listen());
    assert_eq!(
        config.listen[1],
        Address::Tcp {
            family: Family::V6,
            host: "::".into(),
            port: 8457
        }
    );
    let r = &config.resources[0];
    let want = Resource {
        name: "r0".into(),
        provname: "r0".into(),
        local: "/dev/vdb".into(),
        remote: Some(tcp("10.0.0.2", 8457)),
        remote_text: "10.0.0.2".into(),
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
        export: Address::Unix("/run/hast/r0.sock".into()),
        line: 1,
    };
    assert_eq!(r, &want);
}

const FREEBSD_EXAMPLE: &str = "\
# same file on both nodes
listen tcp://0.0.0.0
replication memsync
checksum crc32
compression lzf
timeout 20
exec /usr/local/sbin/hast-event

on alpha { control /var/run/hastctl }

resource vol0 {
        local /dev/ada1p1
        on alpha { remote tcp://192.168.50.2 source tcp://192.168.50.1 }
        on beta  { remote tcp://192.168.50.1 source tcp://192.168.50.2 }
}
resource vol1 {
        name shared
        metaflush off
        on alpha { local /dev/mirror/va  remote 192.168.50.2:8457 }
        on beta  { local /dev/mirror/vb  remote 192.168.50.1:8457 }
}
";

#[test]
fn freebsd_example_for_both_nodes() {
    let alpha = ok(FREEBSD_EXAMPLE, "alpha");
    assert_eq!(alpha.control, Address::Unix("/var/run/hastctl".into()));
    assert_eq!(alpha.listen, vec![tcp("0.0.0.0", 8457)]);
    let [vol0, vol1] = &alpha.resources[..] else {
        panic!("two resources")
    };
    assert_eq!(vol0.local, PathBuf::from("/dev/ada1p1"));
    assert_eq!(vol0.remote_text, "tcp://192.168.50.2");
    assert_eq!(vol0.source, Some(tcp("192.168.50.1", 0)));
    assert_eq!(vol0.source_text.as_deref(), Some("tcp://192.168.50.1"));
    assert_eq!(vol0.checksum, Checksum::Crc32);
    assert_eq!(vol0.compression, Compression::Lzf);
    assert_eq!(vol0.exec, Some("/usr/local/sbin/hast-event".into()));
    assert!(vol0.metaflush);
    assert_eq!(vol1.provname, "shared");
    assert_eq!(vol1.local, PathBuf::from("/dev/mirror/va"));
    assert_eq!(vol1.remote_text, "192.168.50.2:8457");
    assert!(!vol1.metaflush);

    let beta = ok(FREEBSD_EXAMPLE, "beta");
    assert_eq!(beta.control, Address::Unix(DEFAULT_CONTROL.into()));
    assert_eq!(beta.resources[1].local, PathBuf::from("/dev/mirror/vb"));
    assert_eq!(beta.resources[0].remote, Some(tcp("192.168.50.1", 8457)));
}

/// A statement for each keyword, and whether each scope allows it (§1.2's table).
const PLACEMENT: &[(&str, [bool; 4])] = &[
    // [global, top-level on, resource, resource on]
    ("control /run/x.sock", [true, true, false, false]),
    ("pidfile /run/x.pid", [true, true, false, false]),
    ("listen 127.0.0.1:1", [true, true, false, false]),
    ("replication async", [true, false, true, false]),
    ("checksum sha256", [true, false, true, false]),
    ("compression lz4", [true, false, true, false]),
    ("timeout 5", [true, false, true, false]),
    ("exec /bin/true", [true, false, true, false]),
    ("metaflush off", [true, false, true, true]),
    ("name prov", [false, false, true, true]),
    ("local /dev/x", [false, false, true, true]),
    ("remote 10.0.0.9", [false, false, false, true]),
    ("source 10.0.0.1", [false, false, false, true]),
    ("export /run/x.sock", [false, false, true, true]),
];

#[test]
fn every_keyword_in_every_scope() {
    for &(stmt, allowed) in PLACEMENT {
        let keyword = stmt.split(' ').next().unwrap_or_default();
        // The scaffold supplies `local` and `remote` unless the statement is one of them.
        let local = if keyword == "local" {
            ""
        } else {
            "local /dev/l"
        };
        let remote = if keyword == "remote" {
            ""
        } else {
            "remote peer"
        };
        let configs = [
            format!("{stmt}\nresource r {{\n{local}\non a {{ {remote} }}\n}}\n"),
            format!("on a {{\n{stmt}\n}}\nresource r {{\n{local}\non a {{ {remote} }}\n}}\n"),
            format!("resource r {{\n{local}\n{stmt}\non a {{ {remote} }}\n}}\n"),
            format!("resource r {{\n{local}\non a {{ {remote}\n{stmt}\n}}\n}}\n"),
        ];
        for (config, allowed) in configs.iter().zip(allowed) {
            let result = parse(config, "f", &named("a"));
            let placement_error = result.as_ref().err().and_then(|e| {
                e.diagnostics
                    .iter()
                    .find(|d| d.message.contains("is only allowed"))
            });
            if allowed {
                assert!(result.is_ok(), "{config}: {result:?}");
            } else {
                let d = placement_error.unwrap_or_else(|| panic!("{config}: {result:?}"));
                let line = config.lines().position(|l| l.contains(stmt)).unwrap_or(0) + 1;
                assert_eq!(d.line as usize, line, "{config}");
                assert!(d
                    .message
                    .starts_with(&format!("'{keyword}' is only allowed")));
            }
        }
    }
}

#[test]
fn placement_messages_say_where_the_keyword_belongs() {
    single_error(
        "remote 10.0.0.1\nresource r { local /x on a { remote b } }",
        "a",
        1,
        "'remote' is only allowed inside an 'on <node>' block of a resource, not at top level",
    );
    single_error(
        "resource r {\n local /x\n control /run/c.sock\n on a { remote b } }",
        "a",
        3,
        "'control' is only allowed at top level or inside a top-level 'on <node>' block, not \
         directly inside a 'resource' block",
    );
    single_error(
        "on a { timeout 3 }\nresource r { local /x on a { remote b } }",
        "a",
        1,
        "'timeout' is only allowed at top level or directly inside a 'resource' block, not \
         inside a top-level 'on' block",
    );
}

#[test]
fn globals_written_after_a_resource_still_apply() {
    let config = ok(
        &format!(
            "{MINIMAL}replication fullsync\nchecksum crc32c\ncompression none\ntimeout 7\n\
             exec /usr/sbin/hook\nmetaflush off\n"
        ),
        "a",
    );
    let r = &config.resources[0];
    assert_eq!(r.replication, ReplicationMode::Fullsync);
    assert_eq!(r.checksum, Checksum::Crc32c);
    assert_eq!(r.compression, Compression::None);
    assert_eq!(r.timeout, 7);
    assert_eq!(r.exec, Some("/usr/sbin/hook".into()));
    assert!(!r.metaflush);
}

#[test]
fn resource_values_win_over_globals() {
    let config = ok(
        "replication fullsync\nchecksum crc32\ncompression none\ntimeout 7\nexec /a\n\
         metaflush off\nresource r {\n replication async\n checksum sha256\n compression lzf\n\
         timeout 9\n exec /b\n metaflush on\n local /x\n on a { remote b }\n}\n",
        "a",
    );
    let r = &config.resources[0];
    assert_eq!(r.replication, ReplicationMode::Async);
    assert_eq!(r.checksum, Checksum::Sha256);
    assert_eq!(r.compression, Compression::Lzf);
    assert_eq!(r.timeout, 9);
    assert_eq!(r.exec, Some("/b".into()));
    assert!(r.metaflush);
}

#[test]
fn node_control_and_pidfile_win_over_globals_in_any_order() {
    let before = "on a { control /run/n.sock pidfile /run/n.pid }\n\
                  control /run/g.sock\npidfile /run/g.pid\n";
    let after = "control /run/g.sock\npidfile /run/g.pid\n\
                 on a { control /run/n.sock pidfile /run/n.pid }\n";
    for text in [before, after] {
        let config = ok(text, "a");
        assert_eq!(config.control, Address::Unix("/run/n.sock".into()));
        assert_eq!(config.pidfile, PathBuf::from("/run/n.pid"));
        let other = ok(text, "b");
        assert_eq!(other.control, Address::Unix("/run/g.sock".into()));
        assert_eq!(other.pidfile, PathBuf::from("/run/g.pid"));
    }
    let config = ok("on b { control uds:///run/b.sock }", "a");
    assert_eq!(config.control, Address::Unix(DEFAULT_CONTROL.into()));
    assert!(config.resources.is_empty());
}

#[test]
fn listen_lines_accumulate_global_and_node() {
    let text = "listen 10.0.0.1\non a { listen [::1]:9000 }\non b { listen 10.0.0.2 }\n\
                listen tcp6://[::]:8457\n";
    let config = ok(text, "a");
    assert_eq!(
        config.listen,
        vec![
            tcp("10.0.0.1", 8457),
            Address::Tcp {
                family: Family::V6,
                host: "::".into(),
                port: 8457
            },
            tcp("::1", 9000),
        ]
    );
    assert_eq!(ok(text, "b").listen.len(), 3);
    assert_eq!(ok(text, "c").listen.len(), 2);
    assert_eq!(ok("on b { listen 10.0.0.2 }", "a").listen, default_listen());
}

#[test]
fn name_local_metaflush_export_prefer_the_node_block() {
    let text = "metaflush off\nresource r {\n name rp\n local /dev/r\n metaflush on\n\
                export /run/r.sock\n on a { name ap local /dev/a metaflush off \
                export tcp://127.0.0.1 remote b }\n on b { remote a }\n}\n";
    let a = &ok(text, "a").resources[0];
    assert_eq!(
        (a.provname.as_str(), a.local.to_str(), a.metaflush),
        ("ap", Some("/dev/a"), false)
    );
    assert_eq!(a.export, tcp("127.0.0.1", DEFAULT_NBD_PORT));
    let b = &ok(text, "b").resources[0];
    assert_eq!(
        (b.provname.as_str(), b.local.to_str(), b.metaflush),
        ("rp", Some("/dev/r"), true)
    );
    assert_eq!(b.export, Address::Unix("/run/r.sock".into()));
    let inherited = &ok(&format!("metaflush off\n{MINIMAL}"), "a").resources[0];
    assert!(!inherited.metaflush);
}

#[test]
fn remote_none_and_texts_as_written() {
    let r = &ok(
        "resource r { local /x on a { remote none source 10.0.0.1:0 } }",
        "a",
    )
    .resources[0];
    assert_eq!(r.remote, None);
    assert_eq!(r.remote_text, "none");
    assert_eq!(r.source_text.as_deref(), Some("10.0.0.1:0"));
    let r = &ok("resource r { local /x on a { remote \"none\" } }", "a").resources[0];
    assert_eq!(r.remote, Some(tcp("none", 8457)));
}

#[test]
fn host_identity_matching() {
    let text = "resource r1 { local /x on alpha { remote b } }\n\
                resource r2 { local /x on node1.example.com { remote b } }\n\
                resource r3 { local /x on ABCDEF0123 { remote b } }\n\
                resource r4 { local /x on hostid42 { remote b } }\n";
    let host = NodeIdentity::Host {
        hostname: "alpha.example.com".into(),
        machine_id: Some("abcdef0123".into()),
        hostid: Some(42),
    };
    // r1 by short name, r3 by machine id (any case), r4 by hostid; r2 names another host.
    let errs = parse(text, "f", &host).unwrap_err();
    assert_eq!(errs.diagnostics.len(), 1, "{errs}");
    assert_eq!(errs.diagnostics[0].line, 2);
    assert!(errs.diagnostics[0]
        .message
        .contains("(this node answers to: alpha.example.com, alpha, abcdef0123, hostid42)"));
}

#[test]
fn quoted_strings_lift_reserved_words_and_allow_spaces() {
    let config = ok(
        "resource \"local\" {\n local \"/srv/my disk.img\"\n on \"none\" { remote \"host-1\" }\n}",
        "none",
    );
    let r = &config.resources[0];
    assert_eq!(r.name, "local");
    assert_eq!(r.local, PathBuf::from("/srv/my disk.img"));
    assert_eq!(r.remote_text, "host-1");
}

#[test]
fn numeric_resource_name_is_accepted() {
    assert_eq!(
        ok("resource 123 { local /x on a { remote b } }", "a").resources[0].name,
        "123"
    );
}

#[test]
fn errors_display_as_file_line_message() {
    let err = parse("bogus 1\n\ntimeout 0\n", "/etc/hast.conf", &named("a")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "/etc/hast.conf:1: unknown keyword 'bogus'\n/etc/hast.conf:3: timeout must be greater \
         than zero (it is in seconds; the default is 20)"
    );
}

#[test]
fn unknown_keywords_with_hints() {
    single_error("\n\nbogus 1\n", "a", 3, "unknown keyword 'bogus'");
    single_error(
        "Timeout 5",
        "a",
        1,
        "unknown keyword 'Timeout': keywords are lowercase",
    );
    single_error(
        "resource r {\n local /x\n on a {\n remtoe b\n remote b }\n}",
        "a",
        4,
        "unknown keyword 'remtoe': did you mean 'remote'?",
    );
    single_error("fullsync", "a", 1, "did you mean 'replication fullsync'?");
    // An unknown block is skipped whole, so its contents cause no further errors.
    single_error(
        "node alpha {\n remote x\n}\n",
        "a",
        1,
        "unknown keyword 'node'",
    );
}

#[test]
fn missing_on_block_lists_the_node_names() {
    single_error(
        "\nresource shared {\n local /x\n on b { remote c }\n}",
        "a",
        2,
        "resource 'shared' has no 'on' block for this node (this node answers to: a)",
    );
}

#[test]
fn missing_remote_and_local() {
    single_error(
        "resource r {\n local /x\n on b { remote c }\n on a {\n }\n}",
        "a",
        4,
        "resource 'r': the 'on a' block has no 'remote'; add 'remote <address>' (or 'remote none'",
    );
    single_error(
        "resource r {\n on b { remote c local /y }\n on a { remote c }\n}",
        "a",
        1,
        "resource 'r' has no 'local' for this node; add 'local <path>' to the resource or to \
         its 'on a' block",
    );
}

#[test]
fn duplicate_resource_and_on_block() {
    single_error(
        &format!("{MINIMAL}\nresource r0 {{ local /y on a {{ remote c }} }}"),
        "a",
        6,
        "resource 'r0' is already defined on line 1; resource names must be unique",
    );
    single_error(
        "resource r {\n local /x\n on a { remote b }\n on a { remote c }\n}",
        "a",
        4,
        "there is already an 'on a' block on line 3 in resource 'r'; merge the two blocks",
    );
    single_error(
        "on b { }\non b { }\n",
        "a",
        2,
        "there is already an 'on b' block on line 1 at top level",
    );
}

#[test]
fn two_blocks_matching_this_node() {
    let host = NodeIdentity::Host {
        hostname: "alpha.lan".into(),
        machine_id: None,
        hostid: None,
    };
    let err = parse(
        "resource r {\n local /x\n on alpha { remote b }\n on alpha.lan { remote c }\n}",
        "f",
        &host,
    )
    .unwrap_err();
    assert_eq!(err.diagnostics.len(), 1);
    assert_eq!(err.diagnostics[0].line, 4);
    assert!(err.diagnostics[0].message.contains(
        "both 'on alpha' (line 3) and 'on alpha.lan' in resource 'r' designate this node"
    ));
}

#[test]
fn bad_addresses() {
    single_error(
        "resource r {\n local /x\n on a { remote 10.0.0.1:99999 }\n}",
        "a",
        3,
        "bad remote address: port '99999' is not a number from 1 to 65535",
    );
    single_error(
        "listen udp://x",
        "a",
        1,
        "bad listen address: unknown address scheme 'udp://'",
    );
    single_error(
        "listen /run/x.sock",
        "a",
        1,
        "'listen' needs a TCP address (host, host:port or tcp://host:port), got the UNIX socket",
    );
    single_error(
        "control tcp://h:1",
        "a",
        1,
        "'control' must be a UNIX socket",
    );
    single_error(
        "control unix://rel",
        "a",
        1,
        "bad control address: UNIX socket path 'rel' must be absolute",
    );
    single_error(
        "resource r {\n local /x\n export udp://x\n on a { remote b }\n}",
        "a",
        3,
        "bad export address",
    );
    single_error(
        "resource r {\n local /x\n on a { remote b source tcp6://10.0.0.1 }\n}",
        "a",
        3,
        "bad source address: '10.0.0.1' is not an IPv6 address",
    );
}

#[test]
fn timeouts() {
    single_error("timeout 0", "a", 1, "timeout must be greater than zero");
    single_error(
        "\ntimeout abc",
        "a",
        2,
        "timeout must be a whole number of seconds greater than zero, got 'abc'",
    );
    single_error("timeout -5", "a", 1, "got '-5'");
    single_error(
        "timeout 4294967296",
        "a",
        1,
        "timeout 4294967296 is too large",
    );
    assert_eq!(ok("timeout 4294967295", "a").resources.len(), 0);
}

#[test]
fn braces() {
    single_error(
        "timeout 5\nresource r {\n local /x\n on a { remote b }\n",
        "a",
        2,
        "unexpected end of file: the '{' opened on this line is never closed; add a matching \
         '}' to close 'r'",
    );
    single_error(
        "resource r {\n local /x\n on a {\n remote b\n}\n",
        "a",
        1,
        "is never closed",
    );
    single_error(
        &format!("{MINIMAL}}}\n"),
        "a",
        5,
        "unexpected '}' without a matching '{'",
    );
    single_error("{ timeout 5 }", "a", 1, "unexpected '{'");
    let errs = errors("{\n", "a");
    assert_eq!(
        errs[0],
        (
            1,
            "unexpected '{': a block starts with 'resource <name> {' or 'on <node> {'".to_string()
        )
    );
    assert!(errs[1].1.contains("is never closed"), "{errs:?}");
}

#[test]
fn unexpected_end_of_file() {
    single_error(
        "timeout 5\ntimeout",
        "a",
        2,
        "unexpected end of file: 'timeout' needs a number",
    );
    single_error(
        "resource r",
        "a",
        1,
        "unexpected end of file: expected '{' after 'resource r'",
    );
    single_error(
        "\nresource",
        "a",
        2,
        "unexpected end of file: 'resource' needs a resource name",
    );
}

#[test]
fn missing_values_do_not_swallow_the_next_statement() {
    single_error(
        "resource r {\n local\n on a { remote b local /x }\n}",
        "a",
        2,
        "'local' needs an absolute path, found 'on'",
    );
    single_error(
        "exec\ntimeout 5",
        "a",
        1,
        "'exec' needs an absolute path, found 'timeout'",
    );
}

#[test]
fn bad_enum_values() {
    single_error(
        "replication foo",
        "a",
        1,
        "unknown replication mode 'foo' (expected fullsync, memsync or async)",
    );
    single_error(
        "checksum md5",
        "a",
        1,
        "unknown checksum 'md5' (expected none, crc32, crc32c or sha256)",
    );
    single_error(
        "compression zstd",
        "a",
        1,
        "unknown compression 'zstd' (expected none, hole, lzf or lz4)",
    );
    single_error(
        "metaflush yes",
        "a",
        1,
        "metaflush must be 'on' or 'off', got 'yes'",
    );
}

#[test]
fn duplicate_scalar_keywords_are_errors_but_listen_repeats() {
    single_error(
        "timeout 5\nreplication async\ntimeout 6\n",
        "a",
        3,
        "'timeout' is already set on line 1 in this block; remove one of them",
    );
    single_error(
        "resource r {\n local /x\n on a { remote b\n remote c }\n}",
        "a",
        4,
        "'remote' is already set on line 3",
    );
    // Same keyword in different blocks is inheritance, not duplication.
    ok(
        "timeout 5\nresource r { timeout 6 local /x on a { remote b } }",
        "a",
    );
    assert_eq!(ok("listen 10.0.0.1\nlisten 10.0.0.2", "a").listen.len(), 2);
    single_error(
        "listen 10.0.0.1\non a { listen 10.0.0.1:8457 }",
        "a",
        2,
        "listen address tcp://10.0.0.1:8457 is already given on line 1",
    );
}

#[test]
fn resources_sharing_an_export_or_provider_name() {
    single_error(
        "resource r1 { local /x on a { remote b } }\n\
         resource r2 { local /y on a { remote b export /run/hast/r1.sock } }",
        "a",
        2,
        "resource 'r2' exports on unix:///run/hast/r1.sock, which resource 'r1' (line 1) \
         already uses",
    );
    single_error(
        "resource r1 { local /x on a { remote b } }\nresource r2 { name r1 local /y on a { remote b } }",
        "a",
        2,
        "resource 'r2' has provider name 'r1', which resource 'r1' (line 1) already uses",
    );
    // On another node the clash does not exist.
    ok(
        "resource r1 { local /x on a { remote b } on b { remote a } }\n\
         resource r2 { local /y on a { remote b } on b { remote a export /run/hast/r1.sock } }",
        "a",
    );
}

#[test]
fn names_and_paths_are_checked() {
    single_error(
        "resource local { }",
        "a",
        1,
        "'local' is a reserved word and cannot be used as a resource name; write \"local\" in \
         double quotes",
    );
    single_error(
        "resource \"a/b\" { }",
        "a",
        1,
        "resource name 'a/b' must not contain '/'",
    );
    single_error(
        "resource r { local disk.img on a { remote b } }",
        "a",
        1,
        "'local' must be an absolute path, got 'disk.img'",
    );
    single_error("pidfile none", "a", 1, "'none' is a reserved word");
    let long = "x".repeat(100);
    single_error(
        &format!("resource {long} {{ local /x on a {{ remote b }} }}"),
        "a",
        1,
        "the default export socket is unusable",
    );
}

#[test]
fn nested_blocks_are_errors() {
    let errs = errors(
        "resource r {\n local /x\n on a { remote b\n on c { } }\n resource s { }\n}",
        "a",
    );
    assert_eq!(errs.len(), 2, "{errs:#?}");
    assert_eq!(errs[0].0, 4);
    assert!(errs[0].1.contains("'on' blocks cannot be nested"));
    assert_eq!(errs[1].0, 5);
    assert!(errs[1]
        .1
        .contains("'resource' blocks are only allowed at top level"));
}

#[test]
fn lexer_errors_carry_their_line() {
    single_error(
        "timeout 5\nexec /bin/x@y\n",
        "a",
        2,
        "unexpected character '@'",
    );
}

#[test]
fn every_error_is_reported_in_one_run_sorted_by_line() {
    let text = "replication foo\n\
                resource r {\n\
                  timeout 0\n\
                  on a { }\n\
                }\n\
                bogus\n\
                checksum %\n";
    let lines: Vec<u32> = errors(text, "a").iter().map(|e| e.0).collect();
    // foo, timeout 0, no remote (line 4), no local (line 2), bogus, '%', checksum needs a value
    assert_eq!(lines, vec![1, 2, 3, 4, 6, 7, 7]);
}

const KEYWORD_SOUP: &[&str] = &[
    "control",
    "pidfile",
    "listen",
    "replication",
    "checksum",
    "compression",
    "timeout",
    "exec",
    "metaflush",
    "resource",
    "name",
    "local",
    "remote",
    "source",
    "on",
    "off",
    "export",
    "fullsync",
    "memsync",
    "async",
    "none",
    "crc32",
    "crc32c",
    "sha256",
    "hole",
    "lzf",
    "lz4",
    "{",
    "}",
    "{",
    "}",
    "a",
    "b",
    "r0",
    "0",
    "20",
    "/dev/x",
    "/run/s.sock",
    "10.0.0.1",
    "[::1]:80",
    "tcp://h:0",
    "\"q q\"",
    "\"",
    "#",
    "\n",
    "\n",
    "@",
];

proptest! {
    #[test]
    fn never_panics_on_arbitrary_text(text in "\\PC*") {
        let _ = parse(&text, "f", &named("a"));
    }

    #[test]
    fn never_panics_on_keyword_soup(
        words in proptest::collection::vec(proptest::sample::select(KEYWORD_SOUP), 0..60)
    ) {
        let text = words.join(" ");
        let host = NodeIdentity::Host { hostname: "a.b".into(), machine_id: None, hostid: Some(1) };
        if let Err(e) = parse(&text, "f", &host) {
            prop_assert!(!e.diagnostics.is_empty());
            let last_line = u32::try_from(text.lines().count().max(1)).unwrap_or(u32::MAX);
            for d in &e.diagnostics {
                prop_assert!(d.line >= 1 && d.line <= last_line, "{d} in {text:?}");
            }
        }
    }
}

#[test]
fn syncrate_is_inherited_and_validated() {
    let text = "syncrate 50M\nresource r0 {\n  local /dev/vdb\n  on a { remote 10.0.0.2 }\n}\n\
                resource r1 {\n  syncrate 0\n  local /dev/vdc\n  on a { remote 10.0.0.2 }\n}\n";
    let config = ok(text, "a");
    assert_eq!(config.resources[0].syncrate, 50 << 20);
    assert_eq!(config.resources[1].syncrate, 0);
    assert_eq!(
        ok(MINIMAL, "a").resources[0].syncrate,
        0,
        "unlimited by default"
    );
    single_error(
        "syncrate fast\n",
        "a",
        1,
        "syncrate must be a rate in bytes per second",
    );
    single_error(
        "resource r0 {\n local /x\n on a { remote none syncrate 1M }\n}\n",
        "a",
        3,
        "'syncrate' is only allowed at top level or directly inside a 'resource' block",
    );
}

#[test]
fn fence_and_its_timeout_resolve_per_resource_with_file_line_errors() {
    let text = "fence /usr/local/libexec/hast/fence-global\n\
                on a { listen tcp://10.0.0.1 }\n\
                resource r0 { fence_timeout 15\n on a { local /dev/a remote 10.0.0.2 }\n\
                on b { local /dev/b remote 10.0.0.1 } }\n\
                resource r1 { fence /opt/fence\n on a { local /dev/c remote 10.0.0.2 }\n\
                on b { local /dev/d remote 10.0.0.1 } }\n";
    let config = parse(text, "hast.conf", &named("a")).unwrap();
    let r0 = &config.resources[0];
    assert_eq!(
        r0.fence.as_deref(),
        Some(std::path::Path::new("/usr/local/libexec/hast/fence-global"))
    );
    assert_eq!(r0.fence_timeout, 15);
    let r1 = &config.resources[1];
    assert_eq!(
        r1.fence.as_deref(),
        Some(std::path::Path::new("/opt/fence"))
    );
    assert_eq!(r1.fence_timeout, 60);

    let err = parse("fence relative/prog\n", "hast.conf", &named("a"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("hast.conf:1") && err.contains("absolute path"),
        "{err}"
    );
    let err = parse(
        "\nresource r0 { fence_timeout 0 }\n",
        "hast.conf",
        &named("a"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("hast.conf:2") && err.contains("fence_timeout must be greater than zero"),
        "{err}"
    );
}

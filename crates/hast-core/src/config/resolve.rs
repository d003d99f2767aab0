//! One node's view of a parsed file: inheritance and defaults (hast-reference.md §1.4).
//!
//! The whole file is parsed before anything is resolved, so a global statement applies
//! even when written after a resource, and a matching top-level `on` block wins over
//! the globals whatever the order, as in FreeBSD.

use std::path::PathBuf;

use super::address::unix_socket_path;
use super::keyword::Keyword;
use super::model::{
    Address, Checksum, Compression, Config, Family, NodeIdentity, ReplicationMode, Resource,
    DEFAULT_CONTROL, DEFAULT_EXPORT_DIR, DEFAULT_FENCE_TIMEOUT_SECS, DEFAULT_PIDFILE, DEFAULT_PORT,
    DEFAULT_TIMEOUT_SECS,
};
use super::parser::{Block, Diags, Item};

/// Resolves the tree for `node`. Returns `None` when anything was reported.
pub(crate) fn resolve(top: &Block, node: &NodeIdentity, diags: &mut Diags) -> Option<Config> {
    let errors_before = diags.len();
    let global = &top.section;
    let node_block = matching_block(&top.nodes, node, "at top level", diags);
    let own = node_block.map(|b| &b.section);

    let control = own
        .and_then(|s| s.control.as_ref())
        .or(global.control.as_ref())
        .map_or_else(
            || Address::Unix(PathBuf::from(DEFAULT_CONTROL)),
            |i| i.value.clone(),
        );
    let pidfile = own
        .and_then(|s| s.pidfile.as_ref())
        .or(global.pidfile.as_ref())
        .map_or_else(|| PathBuf::from(DEFAULT_PIDFILE), |i| i.value.clone());

    // FreeBSD appends the node block's listens to the global ones rather than overriding.
    let written: Vec<&Item<Address>> = global
        .listen
        .iter()
        .chain(own.into_iter().flat_map(|s| s.listen.iter()))
        .collect();
    for (i, item) in written.iter().enumerate() {
        if let Some(first) = written[..i].iter().find(|f| f.value == item.value) {
            diags.push((
                item.line,
                format!(
                    "listen address {} is already given on line {}; remove one",
                    item.value, first.line
                ),
            ));
        }
    }
    let mut listen: Vec<Address> = written.iter().map(|i| i.value.clone()).collect();
    if listen.is_empty() {
        listen = default_listen();
    }

    let mut resources: Vec<Resource> = Vec::new();
    for block in &top.resources {
        let Some(resource) = resolve_resource(block, global, node, diags) else {
            continue;
        };
        if let Some(other) = resources.iter().find(|r| r.export == resource.export) {
            let message = format!(
                "resource '{}' exports on {}, which resource '{}' (line {}) already uses; \
                 give one of them its own 'export'",
                resource.name, resource.export, other.name, other.line
            );
            diags.push((export_line(block, node), message));
        }
        if let Some(other) = resources.iter().find(|r| r.provname == resource.provname) {
            let message = format!(
                "resource '{}' has provider name '{}', which resource '{}' (line {}) already \
                 uses; set a different 'name'",
                resource.name, resource.provname, other.name, other.line
            );
            diags.push((resource.line, message));
        }
        resources.push(resource);
    }

    (diags.len() == errors_before).then_some(Config {
        control,
        pidfile,
        listen,
        resources,
    })
}

/// FreeBSD listens on both families by default; the daemon skips a family the kernel lacks.
pub fn default_listen() -> Vec<Address> {
    vec![
        Address::Tcp {
            family: Family::V4,
            host: "0.0.0.0".to_string(),
            port: DEFAULT_PORT,
        },
        Address::Tcp {
            family: Family::V6,
            host: "::".to_string(),
            port: DEFAULT_PORT,
        },
    ]
}

/// The one block among `blocks` that designates this node. Two matching blocks with
/// different names (`alpha` and `alpha.example.com`) would make the result depend on
/// the order of the file, so that is an error.
fn matching_block<'a>(
    blocks: &'a [Block],
    node: &NodeIdentity,
    place: &str,
    diags: &mut Diags,
) -> Option<&'a Block> {
    let mut matching = blocks.iter().filter(|b| node.matches(&b.name));
    let first = matching.next()?;
    for other in matching {
        diags.push((
            other.line,
            format!(
                "both 'on {}' (line {}) and 'on {}' {place} designate this node; keep only one",
                first.name, first.line, other.name
            ),
        ));
    }
    Some(first)
}

fn resolve_resource(
    block: &Block,
    global: &super::parser::Section,
    node: &NodeIdentity,
    diags: &mut Diags,
) -> Option<Resource> {
    let name = &block.name;
    let place = format!("in resource '{name}'");
    let Some(own) = matching_block(&block.nodes, node, &place, diags) else {
        diags.push((
            block.line,
            format!(
                "resource '{name}' has no 'on' block for this node (this node answers to: {})",
                node.names().join(", ")
            ),
        ));
        return None;
    };
    let res = &block.section;
    let on = &own.section;

    let remote = match &on.remote {
        Some(item) => Some(item.value.clone()),
        None => {
            if !on.has(Keyword::Remote) {
                diags.push((
                    own.line,
                    format!(
                        "resource '{name}': the 'on {}' block has no 'remote'; add 'remote \
                         <address>' (or 'remote none' to run without a peer)",
                        own.name
                    ),
                ));
            }
            None
        }
    };
    let local = match on.local.as_ref().or(res.local.as_ref()) {
        Some(item) => Some(item.value.clone()),
        None => {
            if !on.has(Keyword::Local) && !res.has(Keyword::Local) {
                diags.push((
                    block.line,
                    format!(
                        "resource '{name}' has no 'local' for this node; add 'local <path>' to \
                         the resource or to its 'on {}' block",
                        own.name
                    ),
                ));
            }
            None
        }
    };
    let export = match on.export.as_ref().or(res.export.as_ref()) {
        Some(item) => Some(item.value.clone()),
        None => match unix_socket_path(&format!("{DEFAULT_EXPORT_DIR}/{name}.sock")) {
            Ok(address) => Some(address),
            Err(e) => {
                diags.push((
                    block.line,
                    format!("resource '{name}': the default export socket is unusable ({e}); set 'export' to a shorter path"),
                ));
                None
            }
        },
    };
    let (remote, local, export) = (remote?, local?, export?);

    Some(Resource {
        name: name.clone(),
        provname: on
            .name
            .as_ref()
            .or(res.name.as_ref())
            .map_or_else(|| name.clone(), |i| i.value.clone()),
        local,
        remote: remote.address,
        remote_text: remote.text,
        source: on.source.as_ref().map(|i| i.value.address.clone()),
        source_text: on.source.as_ref().map(|i| i.value.text.clone()),
        replication: pick(
            &res.replication,
            &global.replication,
            ReplicationMode::Memsync,
        ),
        checksum: pick(&res.checksum, &global.checksum, Checksum::None),
        compression: pick(&res.compression, &global.compression, Compression::Hole),
        timeout: pick(&res.timeout, &global.timeout, DEFAULT_TIMEOUT_SECS),
        syncrate: pick(&res.syncrate, &global.syncrate, 0),
        authkey: res
            .authkey
            .as_ref()
            .or(global.authkey.as_ref())
            .map(|i| i.value.clone()),
        exec: res
            .exec
            .as_ref()
            .or(global.exec.as_ref())
            .map(|i| i.value.clone()),
        fence: res
            .fence
            .as_ref()
            .or(global.fence.as_ref())
            .map(|i| i.value.clone()),
        fence_timeout: pick(
            &res.fence_timeout,
            &global.fence_timeout,
            DEFAULT_FENCE_TIMEOUT_SECS,
        ),
        metaflush: on.metaflush.as_ref().map_or_else(
            || pick(&res.metaflush, &global.metaflush, true),
            |i| i.value,
        ),
        export,
        line: block.line,
    })
}

fn pick<T: Copy>(first: &Option<Item<T>>, second: &Option<Item<T>>, default: T) -> T {
    first
        .as_ref()
        .or(second.as_ref())
        .map_or(default, |i| i.value)
}

/// The line to blame for an export clash: the `export` statement if there is one.
fn export_line(block: &Block, node: &NodeIdentity) -> u32 {
    block
        .nodes
        .iter()
        .find(|b| node.matches(&b.name))
        .and_then(|b| b.section.export.as_ref())
        .or(block.section.export.as_ref())
        .map_or(block.line, |i| i.line)
}

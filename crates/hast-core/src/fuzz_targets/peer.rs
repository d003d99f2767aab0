//! Fuzz targets for what a peer sends on the replication link: frame headers and
//! payloads, the handshake messages and both handshake state machines.

use std::fmt::Debug;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::activemap::ActiveMap;
use crate::config::{Checksum, Compression};
use crate::metadata::{DataState, Layout, Metadata};
use crate::proto::frame::MAX_BITMAP;
use crate::proto::handshake::{self as msg, ErrorMessage, Hello, State, StateReply, Welcome};
use crate::proto::{auth, lzf, payload, Header, Kind, HEADER_LEN};
use crate::replication::handshake::{PrimaryHandshake, SecondaryHandshake};
use crate::replication::request::PeerRequest;

/// Data size of the secondary that the frame target's requests are checked against.
const FRAME_DATASIZE: u64 = (1 << 30) - 4608;

/// Recomputes the CRC-32C of a frame header (the fuzzer cannot forge it).
fn reseal_frame(b: &mut [u8; HEADER_LEN]) {
    let crc = crc32c::crc32c(&b[..36]);
    b[36..40].copy_from_slice(&crc.to_be_bytes());
}

/// One frame as `hast::peer::read_frame` reads it: `Header::decode`, the payload of the
/// announced length, its transforms undone (`payload::open`) for the kinds that carry
/// data, and `PeerRequest::from_header` as the secondary's read loop applies it.
///
/// Input: a mode byte (bit 0: recompute the header CRC), the 40 header bytes, then the
/// payload. Asserts: an accepted header re-encodes to the same 40 bytes and announces
/// no more than its kind allows; opened data has exactly the header's length; an accepted
/// request lies inside the data area and survives its own header unchanged.
pub fn peer_frame(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Some((head, body)) = rest.split_first_chunk::<HEADER_LEN>() else {
        return;
    };
    let mut b = *head;
    if mode & 1 != 0 {
        reseal_frame(&mut b);
    }
    let Ok(h) = Header::decode(&b) else {
        return;
    };
    assert_eq!(h.encode(), b, "frame header round trip");
    assert!(h.payload_len <= h.kind.max_payload());
    let Some(payload) = body.get(..h.payload_len as usize) else {
        return; // The peer stopped sending; the read times out.
    };
    let opened = match h.kind {
        Kind::Write | Kind::Reply | Kind::Bitmap => payload::open(h.transform, payload, h.length),
        _ => Ok(Vec::new()),
    };
    let Ok(opened) = opened else {
        return;
    };
    if matches!(h.kind, Kind::Write | Kind::Reply | Kind::Bitmap) {
        assert_eq!(opened.len(), h.length as usize, "opened payload length");
    }
    let Ok(req) = PeerRequest::from_header(&h, FRAME_DATASIZE, opened.len()) else {
        return;
    };
    if let Some((offset, len)) = req.range() {
        assert!(offset
            .checked_add(u64::from(len))
            .is_some_and(|end| end <= FRAME_DATASIZE));
    }
    let again = req.header(h.seq);
    assert!(Header::decode(&again.encode()).is_ok(), "{req:?}");
    assert_eq!(
        PeerRequest::from_header(&again, FRAME_DATASIZE, opened.len()),
        Ok(req)
    );
}

const COMPRESSIONS: [Compression; 4] = [
    Compression::None,
    Compression::Hole,
    Compression::Lzf,
    Compression::Lz4,
];
const CHECKSUMS: [Checksum; 4] = [
    Checksum::None,
    Checksum::Crc32,
    Checksum::Crc32c,
    Checksum::Sha256,
];

/// Payload transforms: `payload::open` and `lzf::decompress` on hostile bytes, and the
/// `seal` → `open` and `lzf::compress` → `decompress` round trips on the same bytes.
///
/// Input: the transform byte, a big-endian u32 length (reduced modulo the largest
/// length a frame header lets through, `MAX_BITMAP`), then the payload. Asserts: whatever
/// decompresses yields exactly the declared length; a raw payload opens to itself, a hole
/// to zeroes; the sender's transforms are undone to the original data and never grow it
/// by more than a checksum.
pub fn peer_payload(data: &[u8]) {
    let Some(([transform, l0, l1, l2, l3], body)) = data.split_first_chunk::<5>() else {
        return;
    };
    let (transform, length) = (*transform, u32::from_be_bytes([*l0, *l1, *l2, *l3]));
    let length = length % (MAX_BITMAP + 1);
    let expected = length as usize;

    if let Ok(out) = lzf::decompress(body, expected) {
        assert_eq!(out.len(), expected, "lzf output length");
    }
    if let Ok(out) = payload::open(transform, body, length) {
        assert_eq!(out.len(), expected, "opened payload length");
        let sum = match transform >> 4 {
            0 => 0,
            1 | 2 => 4,
            _ => 32,
        };
        match transform & 0x0f {
            0 => assert_eq!(out, body[sum..]),
            1 => assert!(out.iter().all(|&b| b == 0)),
            _ => {}
        }
    }

    let compression = COMPRESSIONS[usize::from(transform & 3)];
    let checksum = CHECKSUMS[usize::from((transform >> 4) & 3)];
    let sealed = payload::seal(body, compression, checksum);
    assert!(sealed.len(body) <= body.len() + 32, "sealing grew the data");
    let Ok(len) = u32::try_from(body.len()) else {
        return;
    };
    match payload::open(sealed.transform, &sealed.to_vec(body), len) {
        Ok(back) => assert_eq!(back, body, "seal/open round trip"),
        Err(e) => panic!("sealed payload refused: {e}"),
    }
    match lzf::decompress(&lzf::compress(body), body.len()) {
        Ok(back) => assert_eq!(back, body, "lzf round trip"),
        Err(e) => panic!("lzf refused its own stream: {e}"),
    }
}

/// Decodes `json` as a `T` and checks that what it re-encodes decodes to the same value.
fn json_round_trip<T>(json: &[u8]) -> Option<T>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let decoded: T = msg::decode(json).ok()?;
    // Defaults filled in may make a message at the limit too large to re-encode; the
    // daemon never re-encodes what it received, so that is not a failure.
    if let Ok(bytes) = msg::encode(&decoded) {
        match msg::decode::<T>(&bytes) {
            Ok(back) => assert_eq!(back, decoded, "handshake message round trip"),
            Err(e) => panic!("re-encoded {decoded:?} does not decode: {e}"),
        }
    }
    Some(decoded)
}

/// Checks `auth::from_hex` on a nonce or proof as it arrives: what it accepts is hex
/// that `to_hex` gives back (lower-cased), at most 128 bytes.
fn check_hex(text: &str) {
    if let Some(bytes) = auth::from_hex(text) {
        assert!(bytes.len() <= 128);
        assert_eq!(
            auth::to_hex(&bytes),
            text.to_ascii_lowercase(),
            "hex round trip"
        );
    }
}

/// The handshake messages (`proto::handshake::decode`) and the hex of the shared-secret
/// exchange (`proto::auth`).
///
/// Input: a byte choosing the message (Hello, Welcome, State, StateReply, Error), then
/// its JSON. Asserts: a decoded message re-encodes to one that decodes equal; its nonce
/// and proof, and the whole text, parse as hex only if they are hex that round-trips.
pub fn peer_handshake_json(data: &[u8]) {
    let Some((&which, json)) = data.split_first() else {
        return;
    };
    match which % 5 {
        0 => {
            if let Some(hello) = json_round_trip::<Hello>(json) {
                if let Some(nonce) = &hello.nonce {
                    check_hex(nonce);
                }
                let _ = SecondaryHandshake::version(&hello);
            }
        }
        1 => {
            if let Some(welcome) = json_round_trip::<Welcome>(json) {
                for text in [&welcome.nonce, &welcome.proof].into_iter().flatten() {
                    check_hex(text);
                }
            }
        }
        2 => {
            if let Some(state) = json_round_trip::<State>(json) {
                if let Some(proof) = &state.proof {
                    check_hex(proof);
                }
            }
        }
        3 => {
            json_round_trip::<StateReply>(json);
        }
        _ => {
            json_round_trip::<ErrorMessage>(json);
        }
    }
    if let Ok(text) = std::str::from_utf8(json) {
        check_hex(text);
    }
}

const HANDSHAKE_KEY: &[u8] = b"fuzz-shared-authkey-0123";
const NONCE_P: [u8; auth::NONCE_LEN] = [0x11; auth::NONCE_LEN];
const NONCE_S: [u8; auth::NONCE_LEN] = [0x22; auth::NONCE_LEN];

/// The metadata of the secondary in the handshake target, picked by `mode`: fresh or
/// paired, counters in every relation of the decision table, consistent or not.
fn handshake_meta(mode: u8) -> Option<Metadata> {
    let layout = Layout::compute(1 << 24, 1 << 20, 512).ok()?;
    let mut m = Metadata::new("r0", layout, 8).ok()?;
    const COUNTERS: [(u64, u64, u64); 8] = [
        (0, 0, 0),
        (5, 0, 0),
        (5, 1, 1),
        (5, 2, 1),
        (5, 1, 2),
        (5, 3, 3),
        (6, 1, 1),
        (5, u64::MAX, u64::MAX),
    ];
    (m.resuid, m.localcnt, m.remotecnt) = COUNTERS[usize::from(mode & 7)];
    m.datastate = DataState::from_bits(u16::from((mode >> 3) & 3))?;
    Some(m)
}

/// The connect-time handshake state machines (`replication::handshake`) of both sides,
/// each facing a stranger playing the other side with messages of its choosing, in any
/// order.
///
/// Input: a mode byte, then chunks separated by `0xff` (a byte JSON text never holds).
/// Mode: bit 0, the secondary has the key; bit 1, the primary has it; bit 2, an empty
/// `proof` is replaced by the correct one (so that what follows a successful
/// authentication is explored too); bits 3–7, the secondary's metadata
/// ([`handshake_meta`]). Chunk 0 is the Hello and chunk 1 the State the secondary
/// receives; each further chunk is a message to the primary, its first byte choosing
/// Welcome, StateReply, Error or the Bitmap frame (header and payload as in
/// [`peer_frame`]).
///
/// Asserts: the secondary welcomes only with a version both speak and a proof of its key,
/// and accepts a State only with the primary's true proof (when it has a key), equal
/// sizes, and metadata to persist that only adopts the resuid or marks a sync target;
/// the primary accepts a Welcome only when it is due and proves the key, a StateReply
/// only after it and with a bitmap of its own size, and merges only such a bitmap.
pub fn peer_handshake(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Some(meta) = handshake_meta(mode >> 3) else {
        return;
    };
    let secondary_key = (mode & 1 != 0).then_some(HANDSHAKE_KEY);
    let primary_key = (mode & 2 != 0).then_some(HANDSHAKE_KEY);
    let fill_proofs = mode & 4 != 0;
    let mut chunks = rest.split(|&b| b == 0xff);

    // The secondary, facing a stranger's Hello and State.
    let hello = chunks.next().and_then(|c| msg::decode::<Hello>(c).ok());
    let state = chunks.next().and_then(|c| msg::decode::<State>(c).ok());
    if let Some(hello) = hello {
        secondary_side(&hello, state, secondary_key, fill_proofs, &meta);
    }

    // The primary, facing a stranger's answers.
    let (mut hs, hello) = PrimaryHandshake::start("r0", primary_key, Some(NONCE_P));
    assert_eq!(hello.nonce.is_some(), primary_key.is_some());
    let Ok(mut map) = ActiveMap::new(
        meta.datasize(),
        meta.extentsize(),
        meta.keepdirty(),
        meta.sectorsize(),
    ) else {
        return;
    };
    let own_mapsize = map.ondisk_size();
    let mut welcomed = false;
    let mut established = None;
    for chunk in chunks {
        let Some((&which, body)) = chunk.split_first() else {
            continue;
        };
        match which % 4 {
            0 => {
                let Ok(mut welcome) = msg::decode::<Welcome>(body) else {
                    continue;
                };
                let ns = welcome.nonce.as_deref().and_then(auth::from_hex);
                if let (true, Some("")) = (fill_proofs, welcome.proof.as_deref()) {
                    let ns = ns.clone().unwrap_or_default();
                    let proof =
                        auth::prove(HANDSHAKE_KEY, auth::Prover::Secondary, "r0", &NONCE_P, &ns);
                    welcome.proof = Some(auth::to_hex(&proof));
                }
                let due = !welcomed && established.is_none();
                match hs.on_welcome(&welcome) {
                    Ok(proof) => {
                        assert!(due, "a Welcome accepted when not due");
                        assert!(msg::VERSIONS.contains(&welcome.version));
                        assert_eq!(proof.is_some(), primary_key.is_some());
                        if let (Some(key), Some(proof)) = (primary_key, proof) {
                            let ns = ns.unwrap_or_default();
                            let theirs = welcome.proof.as_deref().and_then(auth::from_hex);
                            let theirs = theirs.unwrap_or_default();
                            assert!(
                                auth::verify(
                                    key,
                                    auth::Prover::Secondary,
                                    "r0",
                                    &NONCE_P,
                                    &ns,
                                    &theirs
                                ),
                                "a Welcome without the secondary's proof accepted"
                            );
                            let ours = auth::from_hex(&proof).unwrap_or_default();
                            assert!(auth::verify(
                                key,
                                auth::Prover::Primary,
                                "r0",
                                &NONCE_P,
                                &ns,
                                &ours
                            ));
                        }
                        welcomed = true;
                    }
                    Err(_) => return,
                }
            }
            1 => {
                let Ok(reply) = msg::decode::<StateReply>(body) else {
                    continue;
                };
                match hs.on_state_reply(&reply, own_mapsize) {
                    Ok(est) => {
                        assert!(welcomed && established.is_none(), "StateReply not due");
                        assert!(est.mapsize == 0 || u64::from(est.mapsize) == own_mapsize);
                        assert_eq!(est.reply, reply);
                        established = Some(est);
                    }
                    Err(_) => return,
                }
            }
            2 => {
                let Ok(message) = msg::decode::<ErrorMessage>(body) else {
                    continue;
                };
                let _ = hs.on_error(message);
                return;
            }
            _ => {
                let Some(est) = established.as_ref() else {
                    continue;
                };
                let Some((&fmode, rest)) = body.split_first() else {
                    continue;
                };
                let Some((head, payload)) = rest.split_first_chunk::<HEADER_LEN>() else {
                    continue;
                };
                let mut b = *head;
                if fmode & 1 != 0 {
                    reseal_frame(&mut b);
                }
                let Ok(h) = Header::decode(&b) else {
                    return;
                };
                if PrimaryHandshake::check_bitmap(est, &h).is_err() {
                    return;
                }
                assert_eq!((h.kind, h.length), (Kind::Bitmap, est.mapsize));
                let Some(payload) = payload.get(..h.payload_len as usize) else {
                    return;
                };
                let Ok(image) = payload::open(h.transform, payload, h.length) else {
                    return;
                };
                assert_eq!(image.len() as u64, own_mapsize);
                let merged = map.merge(&image);
                assert!(
                    merged.is_ok(),
                    "a bitmap of our own size refused: {merged:?}"
                );
                return;
            }
        }
    }
}

/// The secondary's side of [`peer_handshake`].
fn secondary_side(
    hello: &Hello,
    state: Option<State>,
    key: Option<&[u8]>,
    fill_proofs: bool,
    meta: &Metadata,
) {
    let (hs, welcome) = match SecondaryHandshake::on_hello(hello, key, NONCE_S) {
        Ok(ok) => ok,
        Err(_) => return,
    };
    assert!(msg::VERSIONS.contains(&welcome.version));
    assert!(hello.versions.contains(&welcome.version));
    assert_eq!(hs.agreed_version(), welcome.version);
    let np = hello.nonce.as_deref().and_then(auth::from_hex);
    if let Some(key) = key {
        let np = np.clone().unwrap_or_default();
        assert_eq!(
            np.len(),
            auth::NONCE_LEN,
            "welcomed without the primary's nonce"
        );
        let proof = welcome.proof.as_deref().and_then(auth::from_hex);
        let proof = proof.unwrap_or_default();
        assert!(auth::verify(
            key,
            auth::Prover::Secondary,
            &hello.resource,
            &np,
            &NONCE_S,
            &proof
        ));
    } else {
        assert!(welcome.proof.is_none() && welcome.nonce.is_none());
    }
    let Some(mut state) = state else {
        return;
    };
    if let (true, Some("")) = (fill_proofs, state.proof.as_deref()) {
        let np = np.clone().unwrap_or_default();
        let proof = auth::prove(
            HANDSHAKE_KEY,
            auth::Prover::Primary,
            &hello.resource,
            &np,
            &NONCE_S,
        );
        state.proof = Some(auth::to_hex(&proof));
    }
    let Ok(accepted) = hs.on_state(&state, meta) else {
        return;
    };
    if let Some(key) = key {
        let np = np.unwrap_or_default();
        let proof = state.proof.as_deref().and_then(auth::from_hex);
        let proof = proof.unwrap_or_default();
        assert!(
            auth::verify(
                key,
                auth::Prover::Primary,
                &hello.resource,
                &np,
                &NONCE_S,
                &proof
            ),
            "a State without the primary's proof accepted"
        );
    }
    assert_eq!(
        (state.datasize, state.extentsize),
        (meta.datasize(), meta.extentsize())
    );
    assert_eq!(accepted.reply.mapsize, 0);
    if let Some(next) = &accepted.next_meta {
        assert_ne!(next, meta);
        assert_eq!(next.name(), meta.name());
        assert_eq!(next.layout(), meta.layout());
        assert_eq!(
            (next.localcnt, next.remotecnt),
            (meta.localcnt, meta.remotecnt)
        );
        assert!(next.resuid == meta.resuid || next.resuid == state.resuid);
        assert!(next.datastate == meta.datastate || next.datastate.is_sync_target());
    }
}

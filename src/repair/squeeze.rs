//! Compression of the digest service's bodies. The link between regions is the expensive
//! part of a repair, and the full copy it is measured against crosses it compressed (the
//! producer's batches, `kafka.compression`, lz4 by default), so repair's chunk lists,
//! `_id` lists and documents do too (zstd: smaller, and fast enough at its lowest level).
//! A repair asks for it with `Accept-Encoding: zstd`, and compresses its own requests
//! (marked `Content-Encoding: zstd`) once the service has answered so; a body without
//! the mark is plain BSON, so a service and a repair of different builds still
//! understand each other.

use std::io::Read;

/// The encoding's name in the headers.
pub const ZSTD: &str = "zstd";
/// Bodies smaller than this go plain: a frame's header would eat the saving.
const SMALLEST: usize = 512;
/// zstd's fastest levels: a repair's CPU is shared with the cluster it reads.
const LEVEL: i32 = 1;

/// The body to send and whether it is compressed.
pub fn squeeze(plain: Vec<u8>) -> (Vec<u8>, bool) {
    if plain.len() < SMALLEST {
        return (plain, false);
    }
    match zstd::bulk::compress(&plain, LEVEL) {
        Ok(packed) if packed.len() < plain.len() => (packed, true),
        _ => (plain, false),
    }
}

/// A compressed body's plain bytes, refused past `limit` bytes (a body claiming more is
/// not one of ours).
pub fn unsqueeze(packed: &[u8], limit: usize) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    zstd::stream::read::Decoder::new(packed)?.take(limit as u64 + 1).read_to_end(&mut out)?;
    if out.len() > limit {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("a compressed body holds more than {limit} bytes")));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_come_back_as_sent() {
        let big: Vec<u8> = (0..100_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
        let (packed, squeezed) = squeeze(big.clone());
        assert!(squeezed && packed.len() < big.len() / 4, "{} bytes", packed.len());
        assert_eq!(unsqueeze(&packed, big.len()).expect("round trip"), big);
        assert!(unsqueeze(&packed, big.len() - 1).is_err(), "past the limit");
        assert_eq!(squeeze(vec![1, 2, 3]), (vec![1, 2, 3], false));
        assert!(unsqueeze(b"not zstd", 1000).is_err());
    }
}

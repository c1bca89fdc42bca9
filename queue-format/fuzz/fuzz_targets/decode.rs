//! Any bytes: `decode` and `SegmentHeader::decode` return, never panic, and
//! whatever `decode` accepts re-encodes to exactly the bytes it consumed.

#![no_main]

use libfuzzer_sys::fuzz_target;
use queue_format::{decode, encode, SegmentHeader};

fuzz_target!(|data: &[u8]| {
    if let Ok((record, consumed)) = decode(data) {
        let mut again = Vec::new();
        let size = encode(&record, &mut again).expect("a decoded record re-encodes");
        assert_eq!(size, consumed);
        assert_eq!(&again[..], &data[..consumed]);
    }
    if let Ok(header) = SegmentHeader::decode(data) {
        let mut block = [0u8; queue_format::SEGMENT_HEADER_SIZE_BYTES];
        header
            .encode(&mut block)
            .expect("a decoded header re-encodes");
        assert_eq!(&block[..], &data[..block.len()]);
    }
});

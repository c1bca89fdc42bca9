//! CRC32C (Castagnoli, polynomial 0x1EDC6F41, reflected, initial value and
//! final xor 0xFFFF_FFFF): the checksum of segment headers, records and body
//! files. It is the iSCSI/ext4 CRC; the `crc32c` crate uses the SSE4.2 or
//! ARMv8 CRC instruction where the CPU has one.

/// CRC32C of `bytes`.
pub fn crc32c(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}

/// CRC32C continued over more bytes: `crc32c_append(crc32c(a), b)` is the
/// CRC32C of `a` followed by `b`. Lets a body file's checksum be computed
/// while the body arrives.
pub fn crc32c_append(crc: u32, bytes: &[u8]) -> u32 {
    crc32c::crc32c_append(crc, bytes)
}

#[cfg(test)]
mod tests {
    #[test]
    fn check_value() {
        // The standard check value of CRC-32C (RFC 3720, B.4).
        assert_eq!(super::crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(
            super::crc32c_append(super::crc32c(b"1234"), b"56789"),
            0xE306_9283
        );
        assert_eq!(super::crc32c(&[0u8; 32]), 0x8A91_36AA);
    }
}

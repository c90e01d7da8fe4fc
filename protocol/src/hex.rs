//! Lowercase hex without a heap: ids are printed and parsed on MCUs too.

/// Why a hex string was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HexError {
    /// The string's length is not twice the expected byte count.
    BadLength,
    /// A character outside `0-9a-fA-F`.
    BadDigit,
}

impl core::fmt::Display for HexError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            HexError::BadLength => f.write_str("hex string has the wrong length"),
            HexError::BadDigit => f.write_str("hex string has a non-hex character"),
        }
    }
}

fn digit(c: u8) -> Result<u8, HexError> {
    match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        b'A'..=b'F' => Ok(c - b'A' + 10),
        _ => Err(HexError::BadDigit),
    }
}

/// Decodes `text` into exactly `N` bytes.
pub fn decode_array<const N: usize>(text: &str) -> Result<[u8; N], HexError> {
    let bytes = text.as_bytes();
    if bytes.len() != 2 * N {
        return Err(HexError::BadLength);
    }
    let mut out = [0u8; N];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Ok(out)
}

/// Decodes `text` into a vector of any even length.
#[cfg(feature = "alloc")]
pub fn decode(text: &str) -> Result<alloc::vec::Vec<u8>, HexError> {
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return Err(HexError::BadLength);
    }
    bytes.chunks_exact(2).map(|pair| Ok(digit(pair[0])? << 4 | digit(pair[1])?)).collect()
}

/// Writes `bytes` as lowercase hex into `out` (no allocation); `None` if `out` is shorter
/// than twice `bytes`. Returns the digits written.
pub fn encode_into<'o>(bytes: &[u8], out: &'o mut [u8]) -> Option<&'o str> {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let out = out.get_mut(..2 * bytes.len())?;
    for (b, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        pair[0] = DIGITS[(b >> 4) as usize];
        pair[1] = DIGITS[(b & 15) as usize];
    }
    core::str::from_utf8(out).ok()
}

/// Writes `bytes` as lowercase hex to a formatter (no allocation).
pub fn write(f: &mut core::fmt::Formatter<'_>, bytes: &[u8]) -> core::fmt::Result {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        let pair = [DIGITS[(b >> 4) as usize], DIGITS[(b & 15) as usize]];
        // Both bytes are ASCII digits, so this cannot fail.
        f.write_str(core::str::from_utf8(&pair).unwrap_or("??"))?;
    }
    Ok(())
}

/// Encodes `bytes` as a lowercase hex string.
#[cfg(feature = "alloc")]
pub fn encode(bytes: &[u8]) -> alloc::string::String {
    struct Hex<'a>(&'a [u8]);
    impl core::fmt::Display for Hex<'_> {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            write(f, self.0)
        }
    }
    alloc::format!("{}", Hex(bytes))
}

#[cfg(all(test, feature = "alloc"))]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let bytes = [0x00u8, 0x7f, 0xab, 0xff];
        let text = encode(&bytes);
        assert_eq!(text, "007fabff");
        assert_eq!(decode_array::<4>(&text), Ok(bytes));
        assert_eq!(decode_array::<4>("007FABFF"), Ok(bytes));
        assert_eq!(decode_array::<4>("007fab"), Err(HexError::BadLength));
        assert_eq!(decode_array::<2>("zz00"), Err(HexError::BadDigit));
        assert_eq!(decode("abc"), Err(HexError::BadLength));
    }
}

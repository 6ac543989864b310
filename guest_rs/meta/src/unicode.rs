//! Code point classes as llama.cpp's tokenizers see them (the twin of `realm/tokenizer/unicode.py`),
//! over the generated tables of tables.rs.

use crate::tables as T;

pub const NUMBER: u8 = 0x02;
pub const LETTER: u8 = 0x04;
pub const ACCENT_MARK: u8 = 0x10;
pub const PUNCTUATION: u8 = 0x20;
pub const SYMBOL: u8 = 0x40;
pub const CONTROL: u8 = 0x80;

pub const MAX_CP: u32 = 0x10FFFF;

/// llama.cpp's category flags of `cp` (binary search over the range starts).
pub fn flags(cp: u32) -> u8 {
    if cp > MAX_CP {
        return 0x01;
    }
    let i = T::FLAG_STARTS.partition_point(|&s| s <= cp);
    if i == 0 {
        0x01
    } else {
        T::FLAG_VALUES[i - 1]
    }
}

pub fn is_whitespace(cp: u32) -> bool {
    T::WHITESPACE.binary_search(&cp).is_ok()
}

pub fn is_han(cp: u32) -> bool {
    T::HAN_RANGES.iter().any(|&(a, b)| a <= cp && cp <= b)
}

/// llama.cpp's unicode_tolower.
pub fn lower(cp: u32) -> u32 {
    match T::LOWERCASE.binary_search_by(|e| e.0.cmp(&cp)) {
        Ok(i) => T::LOWERCASE[i].1,
        Err(_) => cp,
    }
}

/// The first code point of `cp`'s canonical decomposition (itself when it has none).
pub fn nfd_first(cp: u32) -> u32 {
    let i = T::NFD.partition_point(|e| e.0 <= cp);
    if i > 0 {
        let (a, b, d) = T::NFD[i - 1];
        if a <= cp && cp <= b {
            return d;
        }
    }
    cp
}

/// The collapsed character of `cp` (ASCII stays; others by category or whitespace).
pub fn collapsed(cp: u32) -> u32 {
    if cp < 0x80 {
        return cp;
    }
    if is_whitespace(cp) {
        return T::COLLAPSED_SPACE;
    }
    let f = flags(cp);
    for &(cat, ch) in T::COLLAPSED_CHAR.iter() {
        if f == cat {
            return ch;
        }
    }
    T::COLLAPSED_OTHER
}

//! GGML block layouts (`#[repr(C)]`, sizes asserted) and the one f16 -> f32 conversion.
//!
//! Layouts follow `realm/quants.py` (LAYOUTS) and ggml-common.h:
//! https://github.com/ggml-org/llama.cpp/blob/b6800/ggml/src/ggml-common.h
//! f16 fields are stored as `u16` bit patterns. Every block size is even, so a block slice taken at
//! a multiple of its size from an 8-aligned buffer is 2-aligned as the structs require.

use core::mem::size_of;

pub const QK_K: usize = 256;
pub const QK4_0: usize = 32;
pub const QK4_1: usize = 32;
pub const QK5_0: usize = 32;
pub const QK5_1: usize = 32;
pub const QK8_0: usize = 32;
pub const K_SCALE_SIZE: usize = 12;

/// ggml type ids the guest can compute with (`realm.quants.GGMLType`).
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum GgmlType {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q2_K = 10,
    Q3_K = 11,
    Q4_K = 12,
    Q5_K = 13,
    Q6_K = 14,
    BF16 = 30,
}

impl GgmlType {
    pub fn from_u32(t: u32) -> Option<GgmlType> {
        Some(match t {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            6 => GgmlType::Q5_0,
            7 => GgmlType::Q5_1,
            8 => GgmlType::Q8_0,
            10 => GgmlType::Q2_K,
            11 => GgmlType::Q3_K,
            12 => GgmlType::Q4_K,
            13 => GgmlType::Q5_K,
            14 => GgmlType::Q6_K,
            30 => GgmlType::BF16,
            _ => return None,
        })
    }

    /// (elements per block, bytes per block).
    pub fn block_size_and_bytes(self) -> (usize, usize) {
        match self {
            GgmlType::F32 => (1, 4),
            GgmlType::F16 => (1, 2),
            GgmlType::BF16 => (1, 2),
            GgmlType::Q4_0 => (QK4_0, size_of::<BlockQ4_0>()),
            GgmlType::Q4_1 => (QK4_1, size_of::<BlockQ4_1>()),
            GgmlType::Q5_0 => (QK5_0, size_of::<BlockQ5_0>()),
            GgmlType::Q5_1 => (QK5_1, size_of::<BlockQ5_1>()),
            GgmlType::Q8_0 => (QK8_0, size_of::<BlockQ8_0>()),
            GgmlType::Q2_K => (QK_K, size_of::<BlockQ2K>()),
            GgmlType::Q3_K => (QK_K, size_of::<BlockQ3K>()),
            GgmlType::Q4_K => (QK_K, size_of::<BlockQ4K>()),
            GgmlType::Q5_K => (QK_K, size_of::<BlockQ5K>()),
            GgmlType::Q6_K => (QK_K, size_of::<BlockQ6K>()),
        }
    }

    /// Bytes of a row of `n_cols` elements, or None if `n_cols` is not a multiple of the block size.
    pub fn row_bytes(self, n_cols: usize) -> Option<usize> {
        let (bs, ts) = self.block_size_and_bytes();
        if n_cols % bs != 0 {
            return None;
        }
        Some(n_cols / bs * ts)
    }
}

/// Q4_0: 32 weights `d * (q - 8)`, q 4-bit; qs[j] holds element j (low nibble) and j + 16 (high).
#[repr(C)]
pub struct BlockQ4_0 {
    pub d: u16,
    pub qs: [u8; QK4_0 / 2],
}
const _: () = assert!(size_of::<BlockQ4_0>() == 18);

/// Q4_1: 32 weights `d * q + m`, q 4-bit, nibbles as Q4_0.
#[repr(C)]
pub struct BlockQ4_1 {
    pub d: u16,
    pub m: u16,
    pub qs: [u8; QK4_1 / 2],
}
const _: () = assert!(size_of::<BlockQ4_1>() == 20);

/// Q5_0: 32 weights `d * (q - 16)`, q 5-bit: nibble as Q4_0, bit 4 of element j is bit j of qh (LE u32).
#[repr(C)]
pub struct BlockQ5_0 {
    pub d: u16,
    pub qh: [u8; 4],
    pub qs: [u8; QK5_0 / 2],
}
const _: () = assert!(size_of::<BlockQ5_0>() == 22);

/// Q5_1: 32 weights `d * q + m`, q 5-bit as Q5_0.
#[repr(C)]
pub struct BlockQ5_1 {
    pub d: u16,
    pub m: u16,
    pub qh: [u8; 4],
    pub qs: [u8; QK5_1 / 2],
}
const _: () = assert!(size_of::<BlockQ5_1>() == 24);

/// Q8_0: 32 weights `d * q`, q int8.
#[repr(C)]
pub struct BlockQ8_0 {
    pub d: u16,
    pub qs: [i8; QK8_0],
}
const _: () = assert!(size_of::<BlockQ8_0>() == 34);

/// Q2_K: 256 weights in 16 groups of 16: `d * (scales & 0xF) * q - dmin * (scales >> 4)`, q 2-bit.
/// Element e = 128 c + 32 s + l (c < 2, s < 4, l < 32) is bits 2s..2s+2 of qs[32 c + l].
#[repr(C)]
pub struct BlockQ2K {
    pub scales: [u8; QK_K / 16],
    pub qs: [u8; QK_K / 4],
    pub d: u16,
    pub dmin: u16,
}
const _: () = assert!(size_of::<BlockQ2K>() == 84);

/// Q3_K: 256 weights in 16 groups of 16: `d * (sc - 32) * (q - 4 * !hbit)`, q 2-bit + 1 high bit.
/// Element e = 128 c + 32 s + l: low bits as Q2_K, high bit = bit (4 c + s) of hmask[l].
/// 6-bit scales packed in 12 bytes:
/// ```text
///  0..8: low nibbles of sc[0..8], high nibbles of bytes 0..8 are the low nibbles of sc[8..16]
///  8..12: byte 8+i holds the top 2 bits of sc[i], sc[i+4], sc[i+8], sc[i+12] (bits 0-1, 2-3, 4-5, 6-7)
/// ```
#[repr(C)]
pub struct BlockQ3K {
    pub hmask: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 4],
    pub scales: [u8; 12],
    pub d: u16,
}
const _: () = assert!(size_of::<BlockQ3K>() == 110);

/// Q4_K: 256 weights in 8 groups of 32: `d * sc * q - dmin * m`, q 4-bit; qs[32 j + l] holds
/// element 64 j + l (low nibble) and 64 j + 32 + l (high); sc, m: 6 bits each, see `get_scale_min_k4`.
#[repr(C)]
pub struct BlockQ4K {
    pub d: u16,
    pub dmin: u16,
    pub scales: [u8; K_SCALE_SIZE],
    pub qs: [u8; QK_K / 2],
}
const _: () = assert!(size_of::<BlockQ4K>() == 144);

/// Q5_K: as Q4_K with a fifth bit: bit s of qh[l] is bit 4 of element 32 s + l.
#[repr(C)]
pub struct BlockQ5K {
    pub d: u16,
    pub dmin: u16,
    pub scales: [u8; K_SCALE_SIZE],
    pub qh: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 2],
}
const _: () = assert!(size_of::<BlockQ5K>() == 176);

/// Q6_K: 256 weights in 16 groups of 16: `d * scales * (q - 32)`, q 6-bit; `d` is stored LAST.
/// In half h (128 elements) element 32 g + l (g < 4, l < 32): low 4 bits from ql[64 h + l + 32 (g & 1)]
/// (low nibble for g < 2, high for g >= 2), top 2 bits are bits 2g..2g+2 of qh[32 h + l].
#[repr(C)]
pub struct BlockQ6K {
    pub ql: [u8; QK_K / 2],
    pub qh: [u8; QK_K / 4],
    pub scales: [i8; QK_K / 16],
    pub d: u16,
}
const _: () = assert!(size_of::<BlockQ6K>() == 210);

/// The 6-bit (scale, min) of group j of a Q4_K/Q5_K block:
/// ```text
///  byte 0..4 : EEAAAAAA   sc[j]  = A (6 bits)        for j < 4, top bits EE belong to sc[j+4]
///  byte 4..8 : eeaaaaaa   m[j]   = a (6 bits)        for j < 4, top bits ee belong to m[j+4]
///  byte 8..12: mmmmssss   sc[j+4] = ssss | EE << 4,  m[j+4] = mmmm | ee << 4
/// ```
#[inline(always)]
pub fn get_scale_min_k4(j: usize, q: &[u8; K_SCALE_SIZE]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// IEEE half -> single, exact for every bit pattern (subnormals, inf, NaN payloads).
#[inline(always)]
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h as u32) & 0x8000) << 16;
    let em = (h as u32) & 0x7fff;
    // Reinterpret exponent+mantissa in the f32 field and rescale by 2^(127-15): exact for normals and
    // subnormals; exponent 31 (inf/NaN) maps to the f32 all-ones exponent instead.
    let scaled = f32::from_bits(em << 13) * f32::from_bits(0x7780_0000);
    let bits = if em >= 0x7c00 {
        (em << 13) | 0x7f80_0000
    } else {
        scaled.to_bits()
    };
    f32::from_bits(bits | sign)
}

/// Single -> half, round to nearest even (the KV cache's storage format).
#[inline(always)]
pub fn f32_to_f16(f: f32) -> u16 {
    let x = f.to_bits();
    let sign = ((x >> 16) & 0x8000) as u16;
    let ax = x & 0x7fff_ffff;
    if ax >= 0x7f80_0000 {
        // inf or NaN (keep a quiet NaN)
        return sign | if ax > 0x7f80_0000 { 0x7e00 } else { 0x7c00 };
    }
    if ax >= 0x4780_0000 {
        // >= 65536: overflow to inf (65520 and above round to inf too, handled below)
        return sign | 0x7c00;
    }
    if ax < 0x3880_0000 {
        // below the smallest normal half (2^-14): subnormal or zero, value = m * 2^-24
        let v = f32::from_bits(ax) * f32::from_bits(0x4b80_0000); // * 2^24, exact
                                                                  // round half to even to an integer
        let r = v as u32;
        let frac = v - r as f32;
        let r = if frac > 0.5 || (frac == 0.5 && (r & 1) == 1) {
            r + 1
        } else {
            r
        };
        return sign | r as u16;
    }
    // normal: rebias exponent, round the 13 dropped mantissa bits to nearest even
    let mant = ax & 0x007f_ffff;
    let exp = (ax >> 23) - 127 + 15;
    let mut h = (exp << 10) | (mant >> 13);
    let rest = mant & 0x1fff;
    if rest > 0x1000 || (rest == 0x1000 && (h & 1) == 1) {
        h += 1; // may carry into the exponent, up to inf: correct
    }
    sign | h as u16
}

/// View a byte slice as a slice of blocks (the length must be a multiple of the block size).
#[inline(always)]
pub fn as_blocks<T>(data: &[u8]) -> &[T] {
    let n = data.len() / size_of::<T>();
    debug_assert!(data.len() % size_of::<T>() == 0);
    unsafe { core::slice::from_raw_parts(data.as_ptr() as *const T, n) }
}

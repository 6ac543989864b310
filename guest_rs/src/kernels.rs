//! Dequantization and fused dequant-dot kernels for every supported ggml type.
//!
//! Per type: `dequantize_<type>` (bit-exact with gguf-py's NumPy dequantizers: same f32 operations in
//! the same order), `dot_<type>` (scalar: one block dequantized into registers/stack, then dotted) and
//! `dot_<type>_simd` (SIMD128), tested equal. `matmul` drives them over rows for 1..n tokens.
//! Bit layouts: see quants.rs and https://github.com/ggml-org/llama.cpp/blob/b6800/ggml/src/ggml-quants.c

use crate::quants::*;
use core::arch::wasm32::*;

// ---------------------------------------------------------------------------------------------
// Per-block scalar dequantization. `y` holds exactly one block's elements.

#[inline(always)]
fn deq_block_q4_0(b: &BlockQ4_0, y: &mut [f32]) {
    let d = f16_to_f32(b.d);
    for j in 0..QK4_0 / 2 {
        y[j] = d * ((b.qs[j] & 0x0F) as i32 - 8) as f32;
        y[j + QK4_0 / 2] = d * ((b.qs[j] >> 4) as i32 - 8) as f32;
    }
}

#[inline(always)]
fn deq_block_q4_1(b: &BlockQ4_1, y: &mut [f32]) {
    let d = f16_to_f32(b.d);
    let m = f16_to_f32(b.m);
    for j in 0..QK4_1 / 2 {
        y[j] = d * (b.qs[j] & 0x0F) as f32 + m;
        y[j + QK4_1 / 2] = d * (b.qs[j] >> 4) as f32 + m;
    }
}

#[inline(always)]
fn deq_block_q5_0(b: &BlockQ5_0, y: &mut [f32]) {
    let d = f16_to_f32(b.d);
    let qh = u32::from_le_bytes(b.qh);
    for j in 0..QK5_0 / 2 {
        let h0 = ((qh >> j) & 1) << 4;
        let h1 = ((qh >> (j + 16)) & 1) << 4;
        y[j] = d * (((b.qs[j] & 0x0F) as u32 | h0) as i32 - 16) as f32;
        y[j + QK5_0 / 2] = d * (((b.qs[j] >> 4) as u32 | h1) as i32 - 16) as f32;
    }
}

#[inline(always)]
fn deq_block_q5_1(b: &BlockQ5_1, y: &mut [f32]) {
    let d = f16_to_f32(b.d);
    let m = f16_to_f32(b.m);
    let qh = u32::from_le_bytes(b.qh);
    for j in 0..QK5_1 / 2 {
        let h0 = ((qh >> j) & 1) << 4;
        let h1 = ((qh >> (j + 16)) & 1) << 4;
        y[j] = d * ((b.qs[j] & 0x0F) as u32 | h0) as f32 + m;
        y[j + QK5_1 / 2] = d * ((b.qs[j] >> 4) as u32 | h1) as f32 + m;
    }
}

#[inline(always)]
fn deq_block_q8_0(b: &BlockQ8_0, y: &mut [f32]) {
    let d = f16_to_f32(b.d);
    for j in 0..QK8_0 {
        y[j] = b.qs[j] as f32 * d;
    }
}

#[inline(always)]
fn deq_block_q2_k(b: &BlockQ2K, y: &mut [f32]) {
    let d = f16_to_f32(b.d);
    let dmin = f16_to_f32(b.dmin);
    for c in 0..2 {
        for s in 0..4 {
            for l in 0..32 {
                let e = 128 * c + 32 * s + l;
                let sc = b.scales[e / 16];
                let dl = d * (sc & 0xF) as f32;
                let ml = dmin * (sc >> 4) as f32;
                let q = (b.qs[32 * c + l] >> (2 * s)) & 3;
                y[e] = dl * q as f32 - ml;
            }
        }
    }
}

#[inline(always)]
fn q3_k_scales(scales: &[u8; 12]) -> [i8; 16] {
    let mut sc = [0i8; 16];
    for i in 0..16 {
        let low = if i < 8 { scales[i] & 0xF } else { scales[i - 8] >> 4 };
        let high = (scales[8 + i % 4] >> (2 * (i / 4))) & 3;
        sc[i] = (low | (high << 4)) as i8 - 32;
    }
    sc
}

#[inline(always)]
fn deq_block_q3_k(b: &BlockQ3K, y: &mut [f32]) {
    let d = f16_to_f32(b.d);
    let sc = q3_k_scales(&b.scales);
    for c in 0..2 {
        for s in 0..4 {
            for l in 0..32 {
                let e = 128 * c + 32 * s + l;
                let dl = d * sc[e / 16] as f32;
                let ql = ((b.qs[32 * c + l] >> (2 * s)) & 3) as i8;
                let hbit = ((b.hmask[l] >> (4 * c + s)) & 1) ^ 1;
                let q = ql - (hbit << 2) as i8;
                y[e] = dl * q as f32;
            }
        }
    }
}

#[inline(always)]
fn deq_block_q4_k(b: &BlockQ4K, y: &mut [f32]) {
    let d = f16_to_f32(b.d);
    let dmin = f16_to_f32(b.dmin);
    for j in 0..4 {
        let (sc1, m1) = get_scale_min_k4(2 * j, &b.scales);
        let (sc2, m2) = get_scale_min_k4(2 * j + 1, &b.scales);
        let d1 = d * sc1 as f32;
        let dm1 = dmin * m1 as f32;
        let d2 = d * sc2 as f32;
        let dm2 = dmin * m2 as f32;
        for l in 0..32 {
            let q = b.qs[32 * j + l];
            y[64 * j + l] = d1 * (q & 0xF) as f32 - dm1;
            y[64 * j + 32 + l] = d2 * (q >> 4) as f32 - dm2;
        }
    }
}

#[inline(always)]
fn deq_block_q5_k(b: &BlockQ5K, y: &mut [f32]) {
    let d = f16_to_f32(b.d);
    let dmin = f16_to_f32(b.dmin);
    for j in 0..4 {
        let (sc1, m1) = get_scale_min_k4(2 * j, &b.scales);
        let (sc2, m2) = get_scale_min_k4(2 * j + 1, &b.scales);
        let d1 = d * sc1 as f32;
        let dm1 = dmin * m1 as f32;
        let d2 = d * sc2 as f32;
        let dm2 = dmin * m2 as f32;
        for l in 0..32 {
            let q = b.qs[32 * j + l];
            let h1 = ((b.qh[l] >> (2 * j)) & 1) << 4;
            let h2 = ((b.qh[l] >> (2 * j + 1)) & 1) << 4;
            y[64 * j + l] = d1 * ((q & 0xF) | h1) as f32 - dm1;
            y[64 * j + 32 + l] = d2 * ((q >> 4) | h2) as f32 - dm2;
        }
    }
}

#[inline(always)]
fn deq_block_q6_k(b: &BlockQ6K, y: &mut [f32]) {
    let d = f16_to_f32(b.d);
    for h in 0..2 {
        for g in 0..4 {
            for l in 0..32 {
                let qlb = b.ql[64 * h + l + 32 * (g & 1)];
                let low = if g < 2 { qlb & 0xF } else { qlb >> 4 };
                let high = (b.qh[32 * h + l] >> (2 * g)) & 3;
                let q = (low | (high << 4)) as i8 - 32;
                let e = 128 * h + 32 * g + l;
                let dl = d * b.scales[e / 16] as f32;
                y[e] = dl * q as f32;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// dequantize_<type>: src holds whole blocks, dst their elements.

macro_rules! dequantize_fn {
    ($name:ident, $block:ty, $qk:expr, $deq:ident) => {
        /// Whole blocks -> f32 elements (bit-exact with gguf-py).
        pub fn $name(src: &[u8], dst: &mut [f32]) {
            for (b, y) in as_blocks::<$block>(src).iter().zip(dst.chunks_exact_mut($qk)) {
                $deq(b, y);
            }
        }
    };
}
dequantize_fn!(dequantize_q4_0, BlockQ4_0, QK4_0, deq_block_q4_0);
dequantize_fn!(dequantize_q4_1, BlockQ4_1, QK4_1, deq_block_q4_1);
dequantize_fn!(dequantize_q5_0, BlockQ5_0, QK5_0, deq_block_q5_0);
dequantize_fn!(dequantize_q5_1, BlockQ5_1, QK5_1, deq_block_q5_1);
dequantize_fn!(dequantize_q8_0, BlockQ8_0, QK8_0, deq_block_q8_0);
dequantize_fn!(dequantize_q2_k, BlockQ2K, QK_K, deq_block_q2_k);
dequantize_fn!(dequantize_q3_k, BlockQ3K, QK_K, deq_block_q3_k);
dequantize_fn!(dequantize_q4_k, BlockQ4K, QK_K, deq_block_q4_k);
dequantize_fn!(dequantize_q5_k, BlockQ5K, QK_K, deq_block_q5_k);
dequantize_fn!(dequantize_q6_k, BlockQ6K, QK_K, deq_block_q6_k);

/// f32 little-endian bytes -> f32.
pub fn dequantize_f32(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(4).zip(dst.iter_mut()) {
        *y = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
}

/// f16 bit patterns -> f32.
pub fn dequantize_f16(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(2).zip(dst.iter_mut()) {
        *y = f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
    }
}

/// bf16 bit patterns -> f32 (the top half of an f32).
pub fn dequantize_bf16(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(2).zip(dst.iter_mut()) {
        *y = f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16);
    }
}

/// Dequantize whole blocks of any supported type.
pub fn dequantize(t: GgmlType, src: &[u8], dst: &mut [f32]) {
    match t {
        GgmlType::F32 => dequantize_f32(src, dst),
        GgmlType::F16 => dequantize_f16(src, dst),
        GgmlType::BF16 => dequantize_bf16(src, dst),
        GgmlType::Q4_0 => dequantize_q4_0(src, dst),
        GgmlType::Q4_1 => dequantize_q4_1(src, dst),
        GgmlType::Q5_0 => dequantize_q5_0(src, dst),
        GgmlType::Q5_1 => dequantize_q5_1(src, dst),
        GgmlType::Q8_0 => dequantize_q8_0(src, dst),
        GgmlType::Q2_K => dequantize_q2_k(src, dst),
        GgmlType::Q3_K => dequantize_q3_k(src, dst),
        GgmlType::Q4_K => dequantize_q4_k(src, dst),
        GgmlType::Q5_K => dequantize_q5_k(src, dst),
        GgmlType::Q6_K => dequantize_q6_k(src, dst),
    }
}

// ---------------------------------------------------------------------------------------------
// Scalar fused dots: row (whole blocks) · x -> f32. Each block is dequantized onto the stack.

macro_rules! dot_scalar_fn {
    ($name:ident, $block:ty, $qk:expr, $deq:ident) => {
        /// Scalar twin: row · x, one block at a time.
        pub fn $name(row: &[u8], x: &[f32]) -> f32 {
            let mut tmp = [0f32; $qk];
            let mut sum = 0f32;
            for (b, xb) in as_blocks::<$block>(row).iter().zip(x.chunks_exact($qk)) {
                $deq(b, &mut tmp);
                for i in 0..$qk {
                    sum += tmp[i] * xb[i];
                }
            }
            sum
        }
    };
}
dot_scalar_fn!(dot_q4_1, BlockQ4_1, QK4_1, deq_block_q4_1);
dot_scalar_fn!(dot_q5_1, BlockQ5_1, QK5_1, deq_block_q5_1);
dot_scalar_fn!(dot_q2_k, BlockQ2K, QK_K, deq_block_q2_k);
dot_scalar_fn!(dot_q3_k, BlockQ3K, QK_K, deq_block_q3_k);

/// Scalar twin for f32 rows.
pub fn dot_f32(row: &[u8], x: &[f32]) -> f32 {
    let mut sum = 0f32;
    for (b, xv) in row.chunks_exact(4).zip(x.iter()) {
        sum += f32::from_le_bytes([b[0], b[1], b[2], b[3]]) * xv;
    }
    sum
}

/// Scalar twin for f16 rows.
pub fn dot_f16(row: &[u8], x: &[f32]) -> f32 {
    let mut sum = 0f32;
    for (b, xv) in row.chunks_exact(2).zip(x.iter()) {
        sum += f16_to_f32(u16::from_le_bytes([b[0], b[1]])) * xv;
    }
    sum
}

/// Scalar twin for bf16 rows.
pub fn dot_bf16(row: &[u8], x: &[f32]) -> f32 {
    let mut sum = 0f32;
    for (b, xv) in row.chunks_exact(2).zip(x.iter()) {
        sum += f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16) * xv;
    }
    sum
}

// ---------------------------------------------------------------------------------------------
// SIMD128 helpers.

#[inline(always)]
fn hsum(v: v128) -> f32 {
    (f32x4_extract_lane::<0>(v) + f32x4_extract_lane::<1>(v))
        + (f32x4_extract_lane::<2>(v) + f32x4_extract_lane::<3>(v))
}

#[inline(always)]
unsafe fn load(p: *const u8) -> v128 {
    v128_load(p as *const v128)
}

/// `u8x16_shr(v, 4)` (each byte's high nibble) as a 16-bit shift and the mask `m4` (0x0F bytes):
/// the bits shifted in across a byte boundary land in the masked-off half. V8 lowers a byte shift
/// to a 16-bit shift plus a mask it rebuilds from an immediate at every use (three more
/// instructions); with `m4` in a register this is two under V8 and Cranelift alike.
#[inline(always)]
fn hi_nibbles(v: v128, m4: v128) -> v128 {
    v128_and(u16x8_shr(v, 4), m4)
}

/// Q6_K's 6-bit values (unsigned, before the -32) of the four groups of 16 that share the bytes at
/// `ql[64h + l..]`, `ql[64h + 32 + l..]` and `qh[32h + l..]`: low nibbles, then high nibbles, each
/// ORed with its group's two high bits moved to bits 4 and 5 (`((qh >> 2g) & 3) << 4`). Only 16-bit
/// shifts, with the masks `m4` (0x0F bytes) and `m30` (0x30 bytes) dropping what crosses a byte.
#[inline(always)]
unsafe fn q6_unpack(b: &BlockQ6K, h: usize, l: usize, m4: v128, m30: v128) -> [v128; 4] {
    let qa = load(b.ql.as_ptr().add(64 * h + l));
    let qb = load(b.ql.as_ptr().add(64 * h + 32 + l));
    let qh = load(b.qh.as_ptr().add(32 * h + l));
    [
        v128_or(v128_and(qa, m4), v128_and(u16x8_shl(qh, 4), m30)),
        v128_or(v128_and(qb, m4), v128_and(u16x8_shl(qh, 2), m30)),
        v128_or(hi_nibbles(qa, m4), v128_and(qh, m30)),
        v128_or(hi_nibbles(qb, m4), v128_and(u16x8_shr(qh, 2), m30)),
    ]
}

#[inline(always)]
unsafe fn loadf(p: *const f32) -> v128 {
    v128_load(p as *const v128)
}

/// a · b over n floats (any n) with SIMD128.
pub fn dot_f32_f32_simd(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut i = 0;
    unsafe {
        let mut acc0 = f32x4_splat(0.0);
        let mut acc1 = f32x4_splat(0.0);
        let mut acc2 = f32x4_splat(0.0);
        let mut acc3 = f32x4_splat(0.0);
        while i + 16 <= n {
            acc0 = f32x4_add(acc0, f32x4_mul(loadf(pa.add(i)), loadf(pb.add(i))));
            acc1 = f32x4_add(acc1, f32x4_mul(loadf(pa.add(i + 4)), loadf(pb.add(i + 4))));
            acc2 = f32x4_add(acc2, f32x4_mul(loadf(pa.add(i + 8)), loadf(pb.add(i + 8))));
            acc3 = f32x4_add(acc3, f32x4_mul(loadf(pa.add(i + 12)), loadf(pb.add(i + 12))));
            i += 16;
        }
        while i + 4 <= n {
            acc0 = f32x4_add(acc0, f32x4_mul(loadf(pa.add(i)), loadf(pb.add(i))));
            i += 4;
        }
        let mut sum = hsum(f32x4_add(f32x4_add(acc0, acc1), f32x4_add(acc2, acc3)));
        while i < n {
            sum += *pa.add(i) * *pb.add(i);
            i += 1;
        }
        sum
    }
}

macro_rules! dot_generic_simd_fn {
    ($name:ident, $block:ty, $qk:expr, $deq:ident) => {
        /// SIMD128: each block dequantized onto the stack, then a SIMD f32 dot.
        pub fn $name(row: &[u8], x: &[f32]) -> f32 {
            let mut tmp = [0f32; $qk];
            let mut sum = 0f32;
            for (b, xb) in as_blocks::<$block>(row).iter().zip(x.chunks_exact($qk)) {
                $deq(b, &mut tmp);
                sum += dot_f32_f32_simd(&tmp, xb);
            }
            sum
        }
    };
}
dot_generic_simd_fn!(dot_q4_1_simd, BlockQ4_1, QK4_1, deq_block_q4_1);
dot_generic_simd_fn!(dot_q5_1_simd, BlockQ5_1, QK5_1, deq_block_q5_1);
dot_generic_simd_fn!(dot_q2_k_simd, BlockQ2K, QK_K, deq_block_q2_k);
dot_generic_simd_fn!(dot_q3_k_simd, BlockQ3K, QK_K, deq_block_q3_k);

/// SIMD128 f32 row.
#[inline(never)]
pub fn dot_f32_simd(row: &[u8], x: &[f32]) -> f32 {
    let n = (row.len() / 4).min(x.len());
    let a = unsafe { core::slice::from_raw_parts(row.as_ptr() as *const f32, n) };
    dot_f32_f32_simd(a, &x[..n])
}

/// Eight f16 bit patterns (u16x8) -> two f32x4 (same bit trick as `f16_to_f32`).
#[inline(always)]
unsafe fn f16x8_to_f32x4x2(h: v128) -> (v128, v128) {
    (
        f16x4_to_f32x4(u32x4_extend_low_u16x8(h)),
        f16x4_to_f32x4(u32x4_extend_high_u16x8(h)),
    )
}

/// SIMD128 f16 row.
#[inline(never)]
pub fn dot_f16_simd(row: &[u8], x: &[f32]) -> f32 {
    let n = (row.len() / 2).min(x.len());
    let (pr, px) = (row.as_ptr(), x.as_ptr());
    let mut i = 0;
    let mut sum;
    unsafe {
        let mut acc = f32x4_splat(0.0);
        while i + 8 <= n {
            let (a, b) = f16x8_to_f32x4x2(load(pr.add(2 * i)));
            acc = f32x4_add(
                acc,
                f32x4_add(f32x4_mul(a, loadf(px.add(i))), f32x4_mul(b, loadf(px.add(i + 4)))),
            );
            i += 8;
        }
        sum = hsum(acc);
    }
    while i < n {
        sum += f16_to_f32(u16::from_le_bytes([row[2 * i], row[2 * i + 1]])) * x[i];
        i += 1;
    }
    sum
}

/// y += a * v for f16 bit patterns v (the KV cache's values), SIMD128.
pub fn axpy_f16_simd(y: &mut [f32], a: f32, v: &[u8]) {
    let n = y.len().min(v.len() / 2);
    let (py, pv) = (y.as_mut_ptr(), v.as_ptr());
    let mut i = 0;
    unsafe {
        let av = f32x4_splat(a);
        while i + 8 <= n {
            let (lo, hi) = f16x8_to_f32x4x2(load(pv.add(2 * i)));
            v128_store(py.add(i) as *mut v128, f32x4_add(loadf(py.add(i)), f32x4_mul(av, lo)));
            v128_store(
                py.add(i + 4) as *mut v128,
                f32x4_add(loadf(py.add(i + 4)), f32x4_mul(av, hi)),
            );
            i += 8;
        }
    }
    while i < n {
        y[i] += a * f16_to_f32(u16::from_le_bytes([v[2 * i], v[2 * i + 1]]));
        i += 1;
    }
}

/// SIMD128 bf16 row.
#[inline(never)]
pub fn dot_bf16_simd(row: &[u8], x: &[f32]) -> f32 {
    let n = (row.len() / 2).min(x.len());
    let (pr, px) = (row.as_ptr(), x.as_ptr());
    let mut i = 0;
    let mut sum;
    unsafe {
        let mut acc = f32x4_splat(0.0);
        while i + 8 <= n {
            let h = load(pr.add(2 * i));
            let a = i32x4_shl(u32x4_extend_low_u16x8(h), 16);
            let b = i32x4_shl(u32x4_extend_high_u16x8(h), 16);
            acc = f32x4_add(
                acc,
                f32x4_add(f32x4_mul(a, loadf(px.add(i))), f32x4_mul(b, loadf(px.add(i + 4)))),
            );
            i += 8;
        }
        sum = hsum(acc);
    }
    while i < n {
        sum += f32::from_bits((u16::from_le_bytes([row[2 * i], row[2 * i + 1]]) as u32) << 16) * x[i];
        i += 1;
    }
    sum
}

/// What a Q5_0 block's 5th bits take off its nibbles, for elements 0..16 and 16..32: 16 where the
/// bit is clear, 0 where set (value = nibble | bit << 4 - 16 = nibble - offset). Constant shuffles
/// (one pshufb each) and an equality test keep this to 9 instructions under Cranelift.
#[inline(always)]
unsafe fn q5_offsets(qh: &[u8; 4]) -> (v128, v128) {
    let h = u32x4_splat(u32::from_le_bytes(*qh));
    let bit = u8x16(1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128);
    let lo = i8x16_shuffle::<0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1>(h, h);
    let hi = i8x16_shuffle::<2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3>(h, h);
    let sixteen = u8x16_splat(0x10);
    (
        v128_andnot(sixteen, i8x16_eq(v128_and(lo, bit), bit)),
        v128_andnot(sixteen, i8x16_eq(v128_and(hi, bit), bit)),
    )
}

// ---------------------------------------------------------------------------------------------
// Integer path for Q4_0, Q5_0, Q8_0, Q4_K, Q5_K, Q6_K: x is quantized once per matvec to int16 per
// block of 32 (`XQ`: q = round(x / d), d = max|x| / 32767, relative error <= 2^-16 of the block
// maximum, far below the f16 KV cache's), so each block is an exact integer dot (i32x4_dot_i16x8)
// scaled by d_w * d_x. The scalar twins compute the same integer sums.

pub const QKX: usize = 32; // elements per activation block

/// x quantized per block of 32: `q` (cols,), `d` scale and `s` = d * Σq of each block (cols / 32,).
pub struct XQ<'a> {
    pub q: &'a [i16],
    pub d: &'a [f32],
    pub s: &'a [f32],
}

/// Types whose dot uses `XQ`.
pub fn uses_xq(t: GgmlType) -> bool {
    matches!(
        t,
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 | GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K
    )
}

/// Quantize x (len a multiple of 32) into q, d, s.
pub fn quantize_x(x: &[f32], q: &mut [i16], d: &mut [f32], s: &mut [f32]) {
    for (b, xb) in x.chunks_exact(QKX).enumerate() {
        // `if a > m` rather than f32::max, which compiles to a call of libm's fmaxf in wasm32 (the
        // same result: a NaN compares false either way and is skipped)
        let amax = xb.iter().fold(0f32, |m, v| {
            let a = v.abs();
            if a > m {
                a
            } else {
                m
            }
        });
        let db = amax / 32767.0;
        let id = if db > 0.0 { 1.0 / db } else { 0.0 };
        let mut isum = 0i32;
        for (qi, v) in q[b * QKX..(b + 1) * QKX].iter_mut().zip(xb) {
            let r = *v * id;
            *qi = ((r + if r >= 0.0 { 0.5 } else { -0.5 }) as i32).clamp(-32767, 32767) as i16;
            isum += *qi as i32;
        }
        d[b] = db;
        // the sum of the *quantized* block: the k-quant min term then cancels against the scale term
        // exactly as in dequantize(w) · x_q, instead of amplifying x's rounding by the mean of q
        s[b] = db * isum as f32;
    }
}

/// Σ w[i] * x[i] over n int16 values with SIMD (n a multiple of 8), lanes as i32x4.
#[inline(always)]
unsafe fn idot16(w: v128, x: *const i16) -> v128 {
    i32x4_dot_i16x8(w, v128_load(x as *const v128))
}

/// 16 signed bytes · 16 int16 at x -> i32x4 partial sums.
#[inline(always)]
unsafe fn idot_i8x16(q: v128, x: *const i16) -> v128 {
    i32x4_add(
        idot16(i16x8_extend_low_i8x16(q), x),
        idot16(i16x8_extend_high_i8x16(q), x.add(8)),
    )
}

#[inline(always)]
fn isum_scalar(q: impl Iterator<Item = i32>, x: &[i16]) -> i32 {
    q.zip(x.iter()).map(|(a, b)| a * *b as i32).sum()
}

/// Scalar twin, Q8_0 · XQ.
pub fn dot_q8_0(row: &[u8], x: &XQ) -> f32 {
    let mut sum = 0f32;
    for (i, b) in as_blocks::<BlockQ8_0>(row).iter().enumerate() {
        let isum = isum_scalar(b.qs.iter().map(|&q| q as i32), &x.q[i * QK8_0..(i + 1) * QK8_0]);
        sum += isum as f32 * (f16_to_f32(b.d) * x.d[i]);
    }
    sum
}

/// SIMD128 Q8_0 · XQ.
#[inline(never)]
pub fn dot_q8_0_simd(row: &[u8], x: &XQ) -> f32 {
    let blocks = as_blocks::<BlockQ8_0>(row);
    let nb = blocks.len().min(x.d.len());
    unsafe {
        let mut acc = f32x4_splat(0.0);
        for i in 0..nb {
            let b = &blocks[i];
            let px = x.q.as_ptr().add(i * QK8_0);
            let q = b.qs.as_ptr() as *const u8;
            let s = i32x4_add(idot_i8x16(load(q), px), idot_i8x16(load(q.add(16)), px.add(16)));
            acc = f32x4_add(
                acc,
                f32x4_mul(
                    f32x4_convert_i32x4(s),
                    f32x4_splat(f16_to_f32(b.d) * *x.d.get_unchecked(i)),
                ),
            );
        }
        hsum(acc)
    }
}

/// Four f16 bit patterns in u32 lanes -> f32x4 (the bit trick of `f16_to_f32`).
#[inline(always)]
unsafe fn f16x4_to_f32x4(w: v128) -> v128 {
    let sign = i32x4_shl(v128_and(w, u32x4_splat(0x8000)), 16);
    let em = v128_and(w, u32x4_splat(0x7fff));
    let scaled = f32x4_mul(i32x4_shl(em, 13), f32x4_splat(f32::from_bits(0x7780_0000)));
    let special = v128_or(i32x4_shl(em, 13), u32x4_splat(0x7f80_0000));
    let is_special = i32x4_gt(em, i32x4_splat(0x7bff)); // em <= 0x7fff: a signed compare is exact
    v128_or(v128_bitselect(special, scaled, is_special), sign)
}

/// [Σ s0, Σ s1, Σ s2, Σ s3] of four i32x4.
#[inline(always)]
fn hsum4_i32(s0: v128, s1: v128, s2: v128, s3: v128) -> v128 {
    let a = i32x4_add(i32x4_shuffle::<0, 4, 1, 5>(s0, s1), i32x4_shuffle::<2, 6, 3, 7>(s0, s1));
    let b = i32x4_add(i32x4_shuffle::<0, 4, 1, 5>(s2, s3), i32x4_shuffle::<2, 6, 3, 7>(s2, s3));
    i32x4_add(i32x4_shuffle::<0, 1, 4, 5>(a, b), i32x4_shuffle::<2, 3, 6, 7>(a, b))
}

/// SIMD128 dot of one row of 32-element blocks with four tokens' XQ (prefill): each block is
/// unpacked once, its integer sums for the four tokens reduced into one vector and scaled by
/// `d * dx[token]` in one multiply. `unpack` gives a block's 32 signed values as two i8x16.
#[inline(always)]
fn dot_tokens4_blocks32<B>(
    row: &[B],
    xs: &[XQ; 4],
    unpack: impl Fn(&B) -> (v128, v128),
    d_bits: impl Fn(&B) -> u16,
) -> [f32; 4] {
    let nb = xs.iter().map(|x| x.d.len()).min().unwrap_or(0).min(row.len());
    unsafe {
        let mut acc = f32x4_splat(0.0);
        for i in 0..nb {
            let b = &row[i];
            let (w0, w1) = unpack(b);
            let e = [
                i16x8_extend_low_i8x16(w0),
                i16x8_extend_high_i8x16(w0),
                i16x8_extend_low_i8x16(w1),
                i16x8_extend_high_i8x16(w1),
            ];
            let isum = |x: &XQ| {
                let px = x.q.as_ptr().add(i * QKX);
                i32x4_add(
                    i32x4_add(idot16(e[0], px), idot16(e[1], px.add(8))),
                    i32x4_add(idot16(e[2], px.add(16)), idot16(e[3], px.add(24))),
                )
            };
            let s = hsum4_i32(isum(&xs[0]), isum(&xs[1]), isum(&xs[2]), isum(&xs[3]));
            let dx = f32x4(
                *xs[0].d.get_unchecked(i),
                *xs[1].d.get_unchecked(i),
                *xs[2].d.get_unchecked(i),
                *xs[3].d.get_unchecked(i),
            );
            let scale = f32x4_mul(dx, f32x4_splat(f16_to_f32(d_bits(b))));
            acc = f32x4_add(acc, f32x4_mul(f32x4_convert_i32x4(s), scale));
        }
        [
            f32x4_extract_lane::<0>(acc),
            f32x4_extract_lane::<1>(acc),
            f32x4_extract_lane::<2>(acc),
            f32x4_extract_lane::<3>(acc),
        ]
    }
}

/// Integer partial sums (i32x4) of 32 signed values given as two i8x16 with the block's four
/// int16 activation vectors.
#[inline(always)]
fn isum_i8x16x2(w0: v128, w1: v128, xv: &[v128; 4]) -> v128 {
    i32x4_add(
        i32x4_add(
            i32x4_dot_i16x8(i16x8_extend_low_i8x16(w0), xv[0]),
            i32x4_dot_i16x8(i16x8_extend_high_i8x16(w0), xv[1]),
        ),
        i32x4_add(
            i32x4_dot_i16x8(i16x8_extend_low_i8x16(w1), xv[2]),
            i32x4_dot_i16x8(i16x8_extend_high_i8x16(w1), xv[3]),
        ),
    )
}

/// Integer partial sums of a Q5_0 block with its activations, in 16-bit lanes throughout: byte j
/// holds elements j (low nibble) and j + 16 (high nibble), so zero-extending 8 bytes to u16 and
/// masking/shifting gives elements 0..8 and 16..24 (then 8..16, 24..32) with native 16-bit ops.
/// The 5th bits enter as Σ_{bit clear} -16 x: a 16-bit lane mask (-1 where the bit is clear)
/// dotted with x. Exactly Σ (q - 16) x, as `isum_i8x16x2` on the unpacked values.
#[inline(always)]
unsafe fn isum_q5_0(b: &BlockQ5_0, xv: &[v128; 4]) -> v128 {
    let v = load(b.qs.as_ptr());
    let qh = u32::from_le_bytes(b.qh);
    let m4 = u16x8_splat(0x0F);
    let v_lo = u16x8_extend_low_u8x16(v); // bytes 0..8
    let v_hi = u16x8_extend_high_u8x16(v); // bytes 8..16
    let nib = i32x4_add(
        i32x4_add(
            i32x4_dot_i16x8(v128_and(v_lo, m4), xv[0]),
            i32x4_dot_i16x8(v128_and(v_hi, m4), xv[1]),
        ),
        i32x4_add(
            i32x4_dot_i16x8(u16x8_shr(v_lo, 4), xv[2]),
            i32x4_dot_i16x8(u16x8_shr(v_hi, 4), xv[3]),
        ),
    );
    let b_lo = u16x8(1, 2, 4, 8, 16, 32, 64, 128);
    let b_hi = u16x8(256, 512, 1024, 2048, 4096, 8192, 16384, 32768);
    let zero = u16x8_splat(0);
    let h0 = u16x8_splat(qh as u16); // bits of elements 0..16
    let h1 = u16x8_splat((qh >> 16) as u16); // elements 16..32
    let clear = i32x4_add(
        i32x4_add(
            i32x4_dot_i16x8(i16x8_eq(v128_and(h0, b_lo), zero), xv[0]),
            i32x4_dot_i16x8(i16x8_eq(v128_and(h0, b_hi), zero), xv[1]),
        ),
        i32x4_add(
            i32x4_dot_i16x8(i16x8_eq(v128_and(h1, b_lo), zero), xv[2]),
            i32x4_dot_i16x8(i16x8_eq(v128_and(h1, b_hi), zero), xv[3]),
        ),
    );
    i32x4_add(nib, i32x4_shl(clear, 4))
}

/// SIMD128 dot of four rows of 32-element blocks with one token's XQ (decode): the activation
/// block is loaded once for the four rows, their integer sums reduced into one vector and scaled
/// by the rows' `d` times `dx` in one multiply. `isum` gives a block's integer partial sums with
/// the activation vectors (elements 0..8, 8..16, 16..24, 24..32).
#[inline(always)]
fn dot_rows4_blocks32<B>(
    rows: [&[B]; 4],
    x: &XQ,
    isum: impl Fn(&B, &[v128; 4]) -> v128,
    d_bits: impl Fn(&B) -> u16,
) -> [f32; 4] {
    let nb = rows.iter().map(|r| r.len()).min().unwrap_or(0).min(x.d.len());
    unsafe {
        let mut acc = f32x4_splat(0.0);
        for i in 0..nb {
            let px = x.q.as_ptr().add(i * QKX);
            let xv = [
                v128_load(px as *const v128),
                v128_load(px.add(8) as *const v128),
                v128_load(px.add(16) as *const v128),
                v128_load(px.add(24) as *const v128),
            ];
            let (c0, c1, c2, c3) = (
                rows[0].get_unchecked(i),
                rows[1].get_unchecked(i),
                rows[2].get_unchecked(i),
                rows[3].get_unchecked(i),
            );
            let s = hsum4_i32(isum(c0, &xv), isum(c1, &xv), isum(c2, &xv), isum(c3, &xv));
            let d = f16x4_to_f32x4(u32x4(
                d_bits(c0) as u32,
                d_bits(c1) as u32,
                d_bits(c2) as u32,
                d_bits(c3) as u32,
            ));
            let scale = f32x4_mul(d, f32x4_splat(*x.d.get_unchecked(i)));
            acc = f32x4_add(acc, f32x4_mul(f32x4_convert_i32x4(s), scale));
        }
        [
            f32x4_extract_lane::<0>(acc),
            f32x4_extract_lane::<1>(acc),
            f32x4_extract_lane::<2>(acc),
            f32x4_extract_lane::<3>(acc),
        ]
    }
}

/// Four rows of Q4_0, Q5_0 or Q8_0 · one token's XQ (decode); None for other types. (4-row
/// versions of the Q4_K/Q6_K kernels, sharing the activation loads and scaling with the four rows'
/// scales in one vector, measured 20-30% slower than one row at a time under Cranelift: the
/// kernels are bound by unpacking instructions, not loads, and four rows' state spills registers.)
pub fn dot_rows4_simd(t: GgmlType, rows: [&[u8]; 4], x: &XQ) -> Option<[f32; 4]> {
    unsafe {
        let m4 = u8x16_splat(0x0F);
        Some(match t {
            GgmlType::Q8_0 => dot_rows4_blocks32(
                rows.map(as_blocks::<BlockQ8_0>),
                x,
                |b, xv| {
                    let q = b.qs.as_ptr() as *const u8;
                    isum_i8x16x2(load(q), load(q.add(16)), xv)
                },
                |b| b.d,
            ),
            GgmlType::Q4_0 => dot_rows4_blocks32(
                rows.map(as_blocks::<BlockQ4_0>),
                x,
                |b, xv| {
                    let v = load(b.qs.as_ptr());
                    let eight = i8x16_splat(8);
                    isum_i8x16x2(i8x16_sub(v128_and(v, m4), eight), i8x16_sub(hi_nibbles(v, m4), eight), xv)
                },
                |b| b.d,
            ),
            GgmlType::Q5_0 => dot_rows4_blocks32(rows.map(as_blocks::<BlockQ5_0>), x, |b, xv| isum_q5_0(b, xv), |b| b.d),
            _ => return None,
        })
    }
}

/// One row of Q4_0, Q5_0, Q8_0, Q4_K or Q6_K · four tokens' XQ (prefill); None for other types.
pub fn dot_tokens4_simd(t: GgmlType, row: &[u8], xs: &[XQ; 4]) -> Option<[f32; 4]> {
    unsafe {
        let m4 = u8x16_splat(0x0F);
        Some(match t {
            GgmlType::Q8_0 => dot_tokens4_blocks32(
                as_blocks::<BlockQ8_0>(row),
                xs,
                |b| {
                    let q = b.qs.as_ptr() as *const u8;
                    (load(q), load(q.add(16)))
                },
                |b| b.d,
            ),
            GgmlType::Q4_0 => dot_tokens4_blocks32(
                as_blocks::<BlockQ4_0>(row),
                xs,
                |b| {
                    let v = load(b.qs.as_ptr());
                    let eight = i8x16_splat(8);
                    (i8x16_sub(v128_and(v, m4), eight), i8x16_sub(hi_nibbles(v, m4), eight))
                },
                |b| b.d,
            ),
            GgmlType::Q5_0 => dot_tokens4_blocks32(
                as_blocks::<BlockQ5_0>(row),
                xs,
                |b| {
                    let v = load(b.qs.as_ptr());
                    let (o0, o1) = q5_offsets(&b.qh);
                    (i8x16_sub(v128_and(v, m4), o0), i8x16_sub(hi_nibbles(v, m4), o1))
                },
                |b| b.d,
            ),
            GgmlType::Q4_K => dot_tokens4_q4_k(as_blocks::<BlockQ4K>(row), xs),
            GgmlType::Q6_K => dot_tokens4_q6_k(as_blocks::<BlockQ6K>(row), xs),
            _ => return None,
        })
    }
}

/// [x0[i], x1[i], x2[i], x3[i]] of a per-block field of four tokens' XQ.
#[inline(always)]
unsafe fn lanes4(a: &[f32], b: &[f32], c: &[f32], d: &[f32], i: usize) -> v128 {
    f32x4(
        *a.get_unchecked(i),
        *b.get_unchecked(i),
        *c.get_unchecked(i),
        *d.get_unchecked(i),
    )
}

/// Integer sums of 16 unpacked i8 values (as two i16x8) with four tokens' q at element `e`, reduced
/// to [token0, .., token3].
#[inline(always)]
unsafe fn isum16_tokens4(lo: v128, hi: v128, xs: &[XQ; 4], e: usize) -> v128 {
    let one = |x: &XQ| {
        let px = x.q.as_ptr().add(e);
        i32x4_add(idot16(lo, px), idot16(hi, px.add(8)))
    };
    hsum4_i32(one(&xs[0]), one(&xs[1]), one(&xs[2]), one(&xs[3]))
}

/// One Q4_K row · four tokens' XQ (prefill).
fn dot_tokens4_q4_k(row: &[BlockQ4K], xs: &[XQ; 4]) -> [f32; 4] {
    let nb = xs.iter().map(|x| x.d.len() / 8).min().unwrap_or(0).min(row.len());
    unsafe {
        let mut acc = f32x4_splat(0.0);
        let m4 = u8x16_splat(0x0F);
        for i in 0..nb {
            let b = &row[i];
            let (d, dmin) = (f16_to_f32(b.d), f16_to_f32(b.dmin));
            for j in 0..4 {
                let q0 = load(b.qs.as_ptr().add(32 * j));
                let q1 = load(b.qs.as_ptr().add(32 * j + 16));
                for (k, (a0, a1)) in [
                    (v128_and(q0, m4), v128_and(q1, m4)),
                    (hi_nibbles(q0, m4), hi_nibbles(q1, m4)),
                ]
                .into_iter()
                .enumerate()
                {
                    let g = 2 * j + k;
                    let xg = i * 8 + g; // activation block
                    let e = xg * QKX;
                    let s = i32x4_add(
                        isum16_tokens4(i16x8_extend_low_i8x16(a0), i16x8_extend_high_i8x16(a0), xs, e),
                        isum16_tokens4(i16x8_extend_low_i8x16(a1), i16x8_extend_high_i8x16(a1), xs, e + 16),
                    );
                    let (sc, m) = get_scale_min_k4(g, &b.scales);
                    let dx = lanes4(xs[0].d, xs[1].d, xs[2].d, xs[3].d, xg);
                    let sx = lanes4(xs[0].s, xs[1].s, xs[2].s, xs[3].s, xg);
                    acc = f32x4_add(
                        acc,
                        f32x4_mul(f32x4_convert_i32x4(s), f32x4_mul(dx, f32x4_splat(d * sc as f32))),
                    );
                    acc = f32x4_sub(acc, f32x4_mul(sx, f32x4_splat(dmin * m as f32)));
                }
            }
        }
        [
            f32x4_extract_lane::<0>(acc),
            f32x4_extract_lane::<1>(acc),
            f32x4_extract_lane::<2>(acc),
            f32x4_extract_lane::<3>(acc),
        ]
    }
}

/// One Q6_K row · four tokens' XQ (prefill).
fn dot_tokens4_q6_k(row: &[BlockQ6K], xs: &[XQ; 4]) -> [f32; 4] {
    let nb = xs.iter().map(|x| x.d.len() / 8).min().unwrap_or(0).min(row.len());
    unsafe {
        let mut acc = f32x4_splat(0.0);
        let m4 = u8x16_splat(0x0F);
        let m30 = u8x16_splat(0x30);
        let off = i8x16_splat(32);
        for i in 0..nb {
            let b = &row[i];
            let d = f16_to_f32(b.d);
            for h in 0..2 {
                for l in (0..32).step_by(16) {
                    let q = q6_unpack(b, h, l, m4, m30);
                    for g in 0..4 {
                        let e = 128 * h + 32 * g + l; // element in the block
                        let xe = i * QK_K + e;
                        let v = i8x16_sub(q[g], off);
                        let s = isum16_tokens4(i16x8_extend_low_i8x16(v), i16x8_extend_high_i8x16(v), xs, xe);
                        let dx = lanes4(xs[0].d, xs[1].d, xs[2].d, xs[3].d, xe / QKX);
                        let scale = f32x4_mul(dx, f32x4_splat(d * b.scales[e / 16] as f32));
                        acc = f32x4_add(acc, f32x4_mul(f32x4_convert_i32x4(s), scale));
                    }
                }
            }
        }
        [
            f32x4_extract_lane::<0>(acc),
            f32x4_extract_lane::<1>(acc),
            f32x4_extract_lane::<2>(acc),
            f32x4_extract_lane::<3>(acc),
        ]
    }
}

/// Scalar twin, Q4_0 · XQ.
pub fn dot_q4_0(row: &[u8], x: &XQ) -> f32 {
    let mut sum = 0f32;
    for (i, b) in as_blocks::<BlockQ4_0>(row).iter().enumerate() {
        let xq = &x.q[i * QK4_0..(i + 1) * QK4_0];
        let lo = isum_scalar(b.qs.iter().map(|&q| (q & 0xF) as i32 - 8), &xq[..16]);
        let hi = isum_scalar(b.qs.iter().map(|&q| (q >> 4) as i32 - 8), &xq[16..]);
        sum += (lo + hi) as f32 * (f16_to_f32(b.d) * x.d[i]);
    }
    sum
}

/// SIMD128 Q4_0 · XQ.
#[inline(never)]
pub fn dot_q4_0_simd(row: &[u8], x: &XQ) -> f32 {
    let blocks = as_blocks::<BlockQ4_0>(row);
    let nb = blocks.len().min(x.d.len());
    unsafe {
        let mut acc = f32x4_splat(0.0);
        let m4 = u8x16_splat(0x0F);
        let eight = i8x16_splat(8);
        for i in 0..nb {
            let b = &blocks[i];
            let px = x.q.as_ptr().add(i * QK4_0);
            let v = load(b.qs.as_ptr());
            let lo = i8x16_sub(v128_and(v, m4), eight);
            let hi = i8x16_sub(hi_nibbles(v, m4), eight);
            let s = i32x4_add(idot_i8x16(lo, px), idot_i8x16(hi, px.add(16)));
            acc = f32x4_add(
                acc,
                f32x4_mul(
                    f32x4_convert_i32x4(s),
                    f32x4_splat(f16_to_f32(b.d) * *x.d.get_unchecked(i)),
                ),
            );
        }
        hsum(acc)
    }
}

/// Scalar twin, Q5_0 · XQ.
pub fn dot_q5_0(row: &[u8], x: &XQ) -> f32 {
    let mut sum = 0f32;
    for (i, b) in as_blocks::<BlockQ5_0>(row).iter().enumerate() {
        let xq = &x.q[i * QK5_0..(i + 1) * QK5_0];
        let qh = u32::from_le_bytes(b.qh);
        let lo = isum_scalar(
            (0..16).map(|j| ((b.qs[j] & 0xF) as u32 | ((qh >> j) & 1) << 4) as i32 - 16),
            &xq[..16],
        );
        let hi = isum_scalar(
            (0..16).map(|j| ((b.qs[j] >> 4) as u32 | ((qh >> (j + 16)) & 1) << 4) as i32 - 16),
            &xq[16..],
        );
        sum += (lo + hi) as f32 * (f16_to_f32(b.d) * x.d[i]);
    }
    sum
}

/// SIMD128 Q5_0 · XQ.
#[inline(never)]
pub fn dot_q5_0_simd(row: &[u8], x: &XQ) -> f32 {
    let blocks = as_blocks::<BlockQ5_0>(row);
    let nb = blocks.len().min(x.d.len());
    unsafe {
        let mut acc = f32x4_splat(0.0);
        let m4 = u8x16_splat(0x0F);
        for i in 0..nb {
            let b = &blocks[i];
            let px = x.q.as_ptr().add(i * QK5_0);
            let v = load(b.qs.as_ptr());
            let (o0, o1) = q5_offsets(&b.qh);
            let lo = i8x16_sub(v128_and(v, m4), o0);
            let hi = i8x16_sub(hi_nibbles(v, m4), o1);
            let s = i32x4_add(idot_i8x16(lo, px), idot_i8x16(hi, px.add(16)));
            acc = f32x4_add(
                acc,
                f32x4_mul(
                    f32x4_convert_i32x4(s),
                    f32x4_splat(f16_to_f32(b.d) * *x.d.get_unchecked(i)),
                ),
            );
        }
        hsum(acc)
    }
}

/// Scalar twin, Q4_K · XQ: per group g of 32, d*sc*dx*(q·xq) - dmin*m*sum(x).
pub fn dot_q4_k(row: &[u8], x: &XQ) -> f32 {
    let mut sum = 0f32;
    for (i, b) in as_blocks::<BlockQ4K>(row).iter().enumerate() {
        let (d, dmin) = (f16_to_f32(b.d), f16_to_f32(b.dmin));
        for j in 0..4 {
            let qs = &b.qs[32 * j..32 * j + 32];
            for (k, shift) in [(2 * j, 0), (2 * j + 1, 4)] {
                let g = i * 8 + k;
                let (sc, m) = get_scale_min_k4(k, &b.scales);
                let isum = isum_scalar(
                    qs.iter().map(|&q| ((q >> shift) & 0xF) as i32),
                    &x.q[g * 32..g * 32 + 32],
                );
                sum += isum as f32 * (d * sc as f32 * x.d[g]) - dmin * m as f32 * x.s[g];
            }
        }
    }
    sum
}

/// SIMD128 Q4_K · XQ.
#[inline(never)]
pub fn dot_q4_k_simd(row: &[u8], x: &XQ) -> f32 {
    let blocks = as_blocks::<BlockQ4K>(row);
    let nb = blocks.len().min(x.d.len() / 8);
    unsafe {
        let mut acc = f32x4_splat(0.0);
        let mut macc = 0f32;
        let m4 = u8x16_splat(0x0F);
        for i in 0..nb {
            let b = &blocks[i];
            let (d, dmin) = (f16_to_f32(b.d), f16_to_f32(b.dmin));
            for j in 0..4 {
                let q0 = load(b.qs.as_ptr().add(32 * j));
                let q1 = load(b.qs.as_ptr().add(32 * j + 16));
                let g1 = i * 8 + 2 * j;
                let (sc1, m1) = get_scale_min_k4(2 * j, &b.scales);
                let (sc2, m2) = get_scale_min_k4(2 * j + 1, &b.scales);
                let x1 = x.q.as_ptr().add(g1 * 32);
                let x2 = x1.add(32);
                let s1 = i32x4_add(
                    idot_i8x16(v128_and(q0, m4), x1),
                    idot_i8x16(v128_and(q1, m4), x1.add(16)),
                );
                let s2 = i32x4_add(
                    idot_i8x16(hi_nibbles(q0, m4), x2),
                    idot_i8x16(hi_nibbles(q1, m4), x2.add(16)),
                );
                acc = f32x4_add(
                    acc,
                    f32x4_mul(
                        f32x4_convert_i32x4(s1),
                        f32x4_splat(d * sc1 as f32 * *x.d.get_unchecked(g1)),
                    ),
                );
                acc = f32x4_add(
                    acc,
                    f32x4_mul(
                        f32x4_convert_i32x4(s2),
                        f32x4_splat(d * sc2 as f32 * *x.d.get_unchecked(g1 + 1)),
                    ),
                );
                macc += dmin * m1 as f32 * *x.s.get_unchecked(g1) + dmin * m2 as f32 * *x.s.get_unchecked(g1 + 1);
            }
        }
        hsum(acc) - macc
    }
}

/// Scalar twin, Q5_K · XQ.
pub fn dot_q5_k(row: &[u8], x: &XQ) -> f32 {
    let mut sum = 0f32;
    for (i, b) in as_blocks::<BlockQ5K>(row).iter().enumerate() {
        let (d, dmin) = (f16_to_f32(b.d), f16_to_f32(b.dmin));
        for j in 0..4 {
            let qs = &b.qs[32 * j..32 * j + 32];
            for (k, shift) in [(2 * j, 0), (2 * j + 1, 4)] {
                let g = i * 8 + k;
                let (sc, m) = get_scale_min_k4(k, &b.scales);
                let q = (0..32).map(|l| (((qs[l] >> shift) & 0xF) | (((b.qh[l] >> k) & 1) << 4)) as i32);
                let isum = isum_scalar(q, &x.q[g * 32..g * 32 + 32]);
                sum += isum as f32 * (d * sc as f32 * x.d[g]) - dmin * m as f32 * x.s[g];
            }
        }
    }
    sum
}

/// SIMD128 Q5_K · XQ.
#[inline(never)]
pub fn dot_q5_k_simd(row: &[u8], x: &XQ) -> f32 {
    let blocks = as_blocks::<BlockQ5K>(row);
    let nb = blocks.len().min(x.d.len() / 8);
    unsafe {
        let mut acc = f32x4_splat(0.0);
        let mut macc = 0f32;
        let m4 = u8x16_splat(0x0F);
        let sixteen = u8x16_splat(0x10);
        for i in 0..nb {
            let b = &blocks[i];
            let (d, dmin) = (f16_to_f32(b.d), f16_to_f32(b.dmin));
            let qh0 = load(b.qh.as_ptr());
            let qh1 = load(b.qh.as_ptr().add(16));
            for j in 0..4 {
                let q0 = load(b.qs.as_ptr().add(32 * j));
                let q1 = load(b.qs.as_ptr().add(32 * j + 16));
                let s1b = 2 * j as u32;
                let h = |qh: v128, s: u32| {
                    let bit = u8x16_splat(1 << s);
                    v128_and(i8x16_eq(v128_and(qh, bit), bit), sixteen)
                };
                let g1 = i * 8 + 2 * j;
                let (sc1, m1) = get_scale_min_k4(2 * j, &b.scales);
                let (sc2, m2) = get_scale_min_k4(2 * j + 1, &b.scales);
                let x1 = x.q.as_ptr().add(g1 * 32);
                let x2 = x1.add(32);
                let a0 = v128_or(v128_and(q0, m4), h(qh0, s1b));
                let a1 = v128_or(v128_and(q1, m4), h(qh1, s1b));
                let b0 = v128_or(hi_nibbles(q0, m4), h(qh0, s1b + 1));
                let b1 = v128_or(hi_nibbles(q1, m4), h(qh1, s1b + 1));
                let s1 = i32x4_add(idot_i8x16(a0, x1), idot_i8x16(a1, x1.add(16)));
                let s2 = i32x4_add(idot_i8x16(b0, x2), idot_i8x16(b1, x2.add(16)));
                acc = f32x4_add(
                    acc,
                    f32x4_mul(
                        f32x4_convert_i32x4(s1),
                        f32x4_splat(d * sc1 as f32 * *x.d.get_unchecked(g1)),
                    ),
                );
                acc = f32x4_add(
                    acc,
                    f32x4_mul(
                        f32x4_convert_i32x4(s2),
                        f32x4_splat(d * sc2 as f32 * *x.d.get_unchecked(g1 + 1)),
                    ),
                );
                macc += dmin * m1 as f32 * *x.s.get_unchecked(g1) + dmin * m2 as f32 * *x.s.get_unchecked(g1 + 1);
            }
        }
        hsum(acc) - macc
    }
}

/// Scalar twin, Q6_K · XQ: per group of 16, d*scale*dx*(q·xq).
pub fn dot_q6_k(row: &[u8], x: &XQ) -> f32 {
    let mut sum = 0f32;
    for (i, b) in as_blocks::<BlockQ6K>(row).iter().enumerate() {
        let d = f16_to_f32(b.d);
        for h in 0..2 {
            for g in 0..4 {
                for half in 0..2 {
                    let l0 = 16 * half;
                    let q = (l0..l0 + 16).map(|l| {
                        let qlb = b.ql[64 * h + l + 32 * (g & 1)];
                        let low = if g < 2 { qlb & 0xF } else { qlb >> 4 };
                        let high = (b.qh[32 * h + l] >> (2 * g)) & 3;
                        (low | (high << 4)) as i32 - 32
                    });
                    let e = 128 * h + 32 * g + l0; // element index in the block
                    let xe = i * QK_K + e;
                    let isum = isum_scalar(q, &x.q[xe..xe + 16]);
                    sum += isum as f32 * (d * b.scales[e / 16] as f32 * x.d[xe / 32]);
                }
            }
        }
    }
    sum
}

/// SIMD128 Q6_K · XQ. Each step unpacks 64 values: four groups of 16 whose scales are 8h + l/16 +
/// {0, 2, 4, 6} and whose activation blocks are 8i + 4h + {0, 1, 2, 3}; their four integer sums go
/// into one vector and are scaled by one vector (the block's scales reordered and converted once).
#[inline(never)]
pub fn dot_q6_k_simd(row: &[u8], x: &XQ) -> f32 {
    let blocks = as_blocks::<BlockQ6K>(row);
    let nb = blocks.len().min(x.d.len() / 8);
    unsafe {
        let mut acc = f32x4_splat(0.0);
        let m4 = u8x16_splat(0x0F);
        let m30 = u8x16_splat(0x30);
        let off = i8x16_splat(32);
        for i in 0..nb {
            let b = &blocks[i];
            let d = f32x4_splat(f16_to_f32(b.d));
            let sc = load(b.scales.as_ptr() as *const u8);
            let sc = i8x16_shuffle::<0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15>(sc, sc);
            let (lo, hi) = (i16x8_extend_low_i8x16(sc), i16x8_extend_high_i8x16(sc));
            let scf = [
                f32x4_mul(f32x4_convert_i32x4(i32x4_extend_low_i16x8(lo)), d),
                f32x4_mul(f32x4_convert_i32x4(i32x4_extend_high_i16x8(lo)), d),
                f32x4_mul(f32x4_convert_i32x4(i32x4_extend_low_i16x8(hi)), d),
                f32x4_mul(f32x4_convert_i32x4(i32x4_extend_high_i16x8(hi)), d),
            ];
            for h in 0..2 {
                let xd = v128_load(x.d.as_ptr().add(8 * i + 4 * h) as *const v128);
                for k in 0..2 {
                    let l = 16 * k;
                    let q = q6_unpack(b, h, l, m4, m30);
                    let px = x.q.as_ptr().add(i * QK_K + 128 * h + l);
                    let s = hsum4_i32(
                        idot_i8x16(i8x16_sub(q[0], off), px),
                        idot_i8x16(i8x16_sub(q[1], off), px.add(32)),
                        idot_i8x16(i8x16_sub(q[2], off), px.add(64)),
                        idot_i8x16(i8x16_sub(q[3], off), px.add(96)),
                    );
                    let scale = f32x4_mul(scf[2 * h + k], xd);
                    acc = f32x4_add(acc, f32x4_mul(f32x4_convert_i32x4(s), scale));
                }
            }
        }
        hsum(acc)
    }
}

// ---------------------------------------------------------------------------------------------
// Dispatch.

/// row · x for one row of type `t` (scalar twin or SIMD128); `xq` is x quantized (`uses_xq` types).
/// The SIMD kernels it calls are `#[inline(never)]`: with all of them inlined this was one 49 KB
/// function, which V8 compiles with heavy spilling around every kernel's loop (Node host decode
/// 4% slower; neutral under Cranelift; benchmarks/reports/2026-12-06-node-read-path).
#[inline]
pub fn dot(t: GgmlType, row: &[u8], x: &[f32], xq: &XQ, simd: bool) -> f32 {
    if simd {
        match t {
            GgmlType::F32 => dot_f32_simd(row, x),
            GgmlType::F16 => dot_f16_simd(row, x),
            GgmlType::BF16 => dot_bf16_simd(row, x),
            GgmlType::Q4_0 => dot_q4_0_simd(row, xq),
            GgmlType::Q4_1 => dot_q4_1_simd(row, x),
            GgmlType::Q5_0 => dot_q5_0_simd(row, xq),
            GgmlType::Q5_1 => dot_q5_1_simd(row, x),
            GgmlType::Q8_0 => dot_q8_0_simd(row, xq),
            GgmlType::Q2_K => dot_q2_k_simd(row, x),
            GgmlType::Q3_K => dot_q3_k_simd(row, x),
            GgmlType::Q4_K => dot_q4_k_simd(row, xq),
            GgmlType::Q5_K => dot_q5_k_simd(row, xq),
            GgmlType::Q6_K => dot_q6_k_simd(row, xq),
        }
    } else {
        match t {
            GgmlType::F32 => dot_f32(row, x),
            GgmlType::F16 => dot_f16(row, x),
            GgmlType::BF16 => dot_bf16(row, x),
            GgmlType::Q4_0 => dot_q4_0(row, xq),
            GgmlType::Q4_1 => dot_q4_1(row, x),
            GgmlType::Q5_0 => dot_q5_0(row, xq),
            GgmlType::Q5_1 => dot_q5_1(row, x),
            GgmlType::Q8_0 => dot_q8_0(row, xq),
            GgmlType::Q2_K => dot_q2_k(row, x),
            GgmlType::Q3_K => dot_q3_k(row, x),
            GgmlType::Q4_K => dot_q4_k(row, xq),
            GgmlType::Q5_K => dot_q5_k(row, xq),
            GgmlType::Q6_K => dot_q6_k(row, xq),
        }
    }
}

/// Scratch for `XQ`, sized for `max_cols` columns.
pub struct XQBuf {
    pub q: Vec<i16>, // (max_cols,)
    pub d: Vec<f32>, // (max_cols / 32,)
    pub s: Vec<f32>, // (max_cols / 32,)
}

impl XQBuf {
    /// Quantize x (cols a multiple of 32) and view it.
    pub fn quantize(&mut self, x: &[f32]) -> XQ {
        let nb = x.len() / QKX;
        quantize_x(x, &mut self.q[..nb * QKX], &mut self.d[..nb], &mut self.s[..nb]);
        XQ {
            q: &self.q[..nb * QKX],
            d: &self.d[..nb],
            s: &self.s[..nb],
        }
    }
}

/// How far ahead of the rows being multiplied `touch` reads. wasm has no prefetch instruction, so
/// each step first loads one byte per cache line of the rows 16 KiB further on, and those
/// independent misses overlap with the arithmetic. It pays only for weights that come from DRAM,
/// and the caller says when (`prefetch`; model.rs: resident matrices of at least PREFETCH_MIN). A
/// guest holding the whole default model decodes 1.7x faster with it. A streamed chunk the host has
/// just copied is already in cache, and touching it costs 3.5-7% (benchmarks/reports/2026-12-06-node-read-path).
const TOUCH_AHEAD: usize = 16 << 10;

/// Load one byte per 64-byte line of `w[from..to]` (clipped), results unused: a software prefetch.
#[inline(always)]
fn touch(w: &[u8], from: usize, to: usize) {
    let to = to.min(w.len());
    let mut i = from;
    while i < to {
        // volatile: kept by LLVM although unused (Cranelift keeps every wasm load: loads can trap)
        unsafe { core::ptr::read_volatile(w.as_ptr().add(i)) };
        i += 64;
    }
}

/// out[t * out_stride + r] = w[r] · x[t] for rows r of `w` (rows × row_bytes) and tokens t < nt;
/// x is (nt, cols). `uses_xq` types: every token's x is quantized once (into `xqb`, sized for nt
/// tokens) and each row is dotted with all tokens while it sits in L1. Other types: each row is
/// dequantized once into `tmp` (>= cols floats) and reused for every token. `prefetch`: see
/// `matmul_quantized`.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    t: GgmlType,
    w: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    nt: usize,
    out: &mut [f32],
    out_stride: usize,
    tmp: &mut [f32],
    xqb: &mut XQBuf,
    prefetch: bool,
) {
    if uses_xq(t) {
        quantize_tokens(x, nt, cols, xqb);
    }
    matmul_quantized(t, w, rows, cols, x, nt, out, out_stride, tmp, xqb, prefetch);
}

/// Quantize the nt tokens of x (nt, cols) into `xqb` for `matmul_quantized` (`uses_xq` types).
pub fn quantize_tokens(x: &[f32], nt: usize, cols: usize, xqb: &mut XQBuf) {
    let nb = cols / QKX;
    for ti in 0..nt {
        quantize_x(
            &x[ti * cols..(ti + 1) * cols],
            &mut xqb.q[ti * cols..(ti + 1) * cols],
            &mut xqb.d[ti * nb..(ti + 1) * nb],
            &mut xqb.s[ti * nb..(ti + 1) * nb],
        );
    }
}

/// `matmul` with x already quantized into `xqb` by `quantize_tokens` (for `uses_xq` types; others
/// read x): a matrix streamed in several chunks quantizes its input once, not once per chunk.
/// `prefetch`: touch the rows ahead (for weights coming from DRAM; see TOUCH_AHEAD).
#[allow(clippy::too_many_arguments)]
pub fn matmul_quantized(
    t: GgmlType,
    w: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    nt: usize,
    out: &mut [f32],
    out_stride: usize,
    tmp: &mut [f32],
    xqb: &XQBuf,
    prefetch: bool,
) {
    let row_bytes = w.len() / rows.max(1);
    let touch_ahead = |from: usize, to: usize| {
        if prefetch {
            touch(w, from + TOUCH_AHEAD, to + TOUCH_AHEAD)
        }
    };
    if uses_xq(t) {
        let nb = cols / QKX;
        let mut r0 = 0;
        if nt == 1 {
            let xq = XQ {
                q: &xqb.q[..cols],
                d: &xqb.d[..nb],
                s: &xqb.s[..nb],
            };
            while r0 + 4 <= rows {
                let row = |k: usize| &w[(r0 + k) * row_bytes..(r0 + k + 1) * row_bytes];
                touch_ahead((r0 + 4) * row_bytes, (r0 + 8) * row_bytes);
                match dot_rows4_simd(t, [row(0), row(1), row(2), row(3)], &xq) {
                    Some(v) => out[r0..r0 + 4].copy_from_slice(&v),
                    None => break,
                }
                r0 += 4;
            }
        }
        let xq_of = |ti: usize| XQ {
            q: &xqb.q[ti * cols..(ti + 1) * cols],
            d: &xqb.d[ti * nb..(ti + 1) * nb],
            s: &xqb.s[ti * nb..(ti + 1) * nb],
        };
        for r in r0..rows {
            let row = &w[r * row_bytes..(r + 1) * row_bytes];
            touch_ahead((r + 1) * row_bytes, (r + 2) * row_bytes);
            let mut t0 = 0;
            while nt > 1 && t0 + 4 <= nt {
                let xs = [xq_of(t0), xq_of(t0 + 1), xq_of(t0 + 2), xq_of(t0 + 3)];
                match dot_tokens4_simd(t, row, &xs) {
                    Some(v) => {
                        for (k, val) in v.iter().enumerate() {
                            out[(t0 + k) * out_stride + r] = *val;
                        }
                    }
                    None => break,
                }
                t0 += 4;
            }
            for ti in t0..nt {
                let xq = XQ {
                    q: &xqb.q[ti * cols..(ti + 1) * cols],
                    d: &xqb.d[ti * nb..(ti + 1) * nb],
                    s: &xqb.s[ti * nb..(ti + 1) * nb],
                };
                out[ti * out_stride + r] = dot(t, row, &[], &xq, true);
            }
        }
        return;
    }
    if nt == 1 {
        let xq = XQ { q: &[], d: &[], s: &[] };
        for r in 0..rows {
            out[r] = dot(t, &w[r * row_bytes..(r + 1) * row_bytes], &x[..cols], &xq, true);
        }
        return;
    }
    let tmp = &mut tmp[..cols];
    for r in 0..rows {
        dequantize(t, &w[r * row_bytes..(r + 1) * row_bytes], tmp);
        for ti in 0..nt {
            out[ti * out_stride + r] = dot_f32_f32_simd(tmp, &x[ti * cols..(ti + 1) * cols]);
        }
    }
}

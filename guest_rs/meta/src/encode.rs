//! The three encoders of one text fragment (twins of realm/tokenizer/{spm,bpe,wpm}.py), over a
//! byte-string index of the vocabulary: SentencePiece merging by score ("llama"), byte-pair
//! encoding by merge rank ("gpt2", "gemma4"), WordPiece longest match ("bert").

use crate::abi::ERR_BAD_GGUF;
use crate::gguf::StrTable;
use crate::pretok::{try_grow, Pre};
use crate::tables as T;
use crate::unicode as U;
use crate::MetaError;
use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// Open-addressing index: byte string -> its first position in a string table.
pub struct Index {
    pub strings: StrTable,
    slots: Vec<u32>, // position + 1, 0 = empty; a power of two, at most half full
}

fn hash(b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &x in b {
        h = (h ^ x as u64).wrapping_mul(0x0100_0000_01b3);
    }
    h ^ (h >> 29)
}

impl Index {
    /// Index `strings`; the first duplicate (earlier position, later position) is returned too.
    pub fn new(strings: StrTable) -> Result<(Index, Option<(usize, usize)>), MetaError> {
        let n = strings.len();
        let size = (2 * n).next_power_of_two().max(16);
        let mut slots = Vec::new();
        try_grow(&mut slots, size)?;
        slots.resize(size, 0u32);
        let mut ix = Index { strings, slots };
        let mut dup = None;
        let mask = size - 1;
        for i in 0..n {
            let key = ix.strings.get(i);
            let mut s = hash(key) as usize & mask;
            loop {
                let e = ix.slots[s];
                if e == 0 {
                    ix.slots[s] = i as u32 + 1;
                    break;
                }
                if ix.strings.get(e as usize - 1) == key {
                    if dup.is_none() {
                        dup = Some((e as usize - 1, i));
                    }
                    break; // the first occurrence wins
                }
                s = (s + 1) & mask;
            }
        }
        Ok((ix, dup))
    }

    pub fn get(&self, key: &[u8]) -> Option<u32> {
        let mask = self.slots.len() - 1;
        let mut s = hash(key) as usize & mask;
        loop {
            let e = self.slots[s];
            if e == 0 {
                return None;
            }
            if self.strings.get(e as usize - 1) == key {
                return Some(e - 1);
            }
            s = (s + 1) & mask;
        }
    }

    pub fn text(&self, id: u32) -> &[u8] {
        self.strings.get(id as usize)
    }

    pub fn len(&self) -> usize {
        self.strings.len()
    }
}

pub fn utf8_len(b: u8) -> usize {
    match b {
        0x00..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xf7 => 4,
        _ => 1,
    }
}

/// Byte ranges of the characters of `s` (valid UTF-8).
fn char_ranges(s: &[u8]) -> (Vec<u32>, Vec<u32>) {
    let mut start = Vec::with_capacity(s.len());
    let mut len = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let l = utf8_len(s[i]).min(s.len() - i);
        start.push(i as u32);
        len.push(l as u32);
        i += l;
    }
    (start, len)
}

// -- SPM -----------------------------------------------------------------------------------------

/// A queued SPM merge: pops highest score first, then leftmost, then shortest.
struct Cand {
    score: f32,
    left: u32,
    size: u32,
}

impl PartialEq for Cand {
    fn eq(&self, o: &Cand) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Cand {}
impl PartialOrd for Cand {
    fn partial_cmp(&self, o: &Cand) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Cand {
    fn cmp(&self, o: &Cand) -> Ordering {
        self.score
            .partial_cmp(&o.score)
            .unwrap_or(Ordering::Equal)
            .then(o.left.cmp(&self.left))
            .then(o.size.cmp(&self.size))
    }
}

/// Append the ids of one escaped fragment ('▁' for spaces) as llama.cpp's llm_tokenizer_spm_session.
pub fn spm(
    vocab: &Index,
    scores: &[f32],
    byte_ids: &[Option<u32>; 256],
    unk: Option<u32>,
    text: &[u8],
    out: &mut Vec<u32>,
) -> Result<(), MetaError> {
    let (start, mut len) = char_ranges(text);
    let n = start.len();
    if n == 0 {
        return Ok(());
    }
    let mut nxt: Vec<i32> = (1..=n as i32).collect();
    nxt[n - 1] = -1;
    let mut prv: Vec<i32> = (-1..n as i32 - 1).collect();
    let sym = |s: u32, l: u32| &text[s as usize..(s + l) as usize];
    let mut heap = BinaryHeap::new();
    // at most n - 1 initial pairs and two per merge (n - 1 merges): reserved once, never regrown
    heap.try_reserve(3 * n).map_err(|_| crate::gguf::oom("the SPM merge queue"))?;
    for i in 0..n - 1 {
        let l = len[i] + len[i + 1];
        if let Some(id) = vocab.get(sym(start[i], l)) {
            heap.push(Cand { score: scores[id as usize], left: i as u32, size: l });
        }
    }
    while let Some(c) = heap.pop() {
        let left = c.left as usize;
        let right = nxt[left];
        if len[left] == 0 || right < 0 || len[left] + len[right as usize] != c.size {
            continue; // stale
        }
        let right = right as usize;
        len[left] += len[right];
        len[right] = 0;
        let nr = nxt[right];
        nxt[left] = nr;
        if nr >= 0 {
            prv[nr as usize] = left as i32;
        }
        let pl = prv[left];
        if pl >= 0 {
            let pl = pl as usize;
            let l = len[pl] + len[left];
            if let Some(id) = vocab.get(sym(start[pl], l)) {
                heap.push(Cand { score: scores[id as usize], left: pl as u32, size: l });
            }
        }
        if nr >= 0 {
            let l = len[left] + len[nr as usize];
            if let Some(id) = vocab.get(sym(start[left], l)) {
                heap.push(Cand { score: scores[id as usize], left: left as u32, size: l });
            }
        }
    }
    let mut i: i32 = 0;
    while i >= 0 {
        let s = sym(start[i as usize], len[i as usize]);
        match vocab.get(s) {
            Some(id) => push(out, id)?,
            None => {
                // only single characters can miss the vocabulary: their UTF-8 bytes, else UNK
                if s.iter().all(|&b| byte_ids[b as usize].is_some()) {
                    for &b in s {
                        push(out, byte_ids[b as usize].unwrap())?;
                    }
                } else if let Some(u) = unk {
                    push(out, u)?;
                } else {
                    return Err(MetaError::new(
                        ERR_BAD_GGUF,
                        format!(
                            "cannot encode {}: no byte-fallback tokens and no unknown token",
                            crate::pyfmt::repr_str(&String::from_utf8_lossy(s))
                        ),
                    ));
                }
            }
        }
        i = nxt[i as usize];
    }
    Ok(())
}

pub fn push(out: &mut Vec<u32>, id: u32) -> Result<(), MetaError> {
    if out.len() == out.capacity() {
        try_grow(out, out.len().max(64))?;
    }
    out.push(id);
    Ok(())
}

// -- BPE -----------------------------------------------------------------------------------------

/// GPT-2's byte -> printable character map: printable Latin-1 bytes map to themselves, the rest to
/// U+0100 onwards in byte order.
pub fn byte_chars() -> [u32; 256] {
    let mut out = [0u32; 256];
    let mut n = 0;
    for b in 0..256u32 {
        let keep = (0x21..0x7f).contains(&b) || (0xa1..0xad).contains(&b) || (0xae..0x100).contains(&b);
        out[b as usize] = if keep {
            b
        } else {
            n += 1;
            255 + n
        };
    }
    out
}

/// The byte of a GPT-2 byte character, if it is one.
pub fn byte_of_char(c: u32) -> Option<u8> {
    if (0x21..0x7f).contains(&c) || (0xa1..0xad).contains(&c) || (0xae..0x100).contains(&c) {
        return Some(c as u8);
    }
    if (0x100..0x144).contains(&c) {
        // the n-th byte outside the printable set
        let mut n = 0;
        for b in 0..256u32 {
            let keep = (0x21..0x7f).contains(&b) || (0xa1..0xad).contains(&b) || (0xae..0x100).contains(&b);
            if !keep {
                if 0x100 + n == c {
                    return Some(b as u8);
                }
                n += 1;
            }
        }
    }
    None
}

pub struct Bpe {
    pub pre: Pre,
    merges: Index, // "left right" -> rank (first occurrence)
    chars: [u32; 256],
}

struct Pair {
    rank: u32,
    left: u32,
    right: u32,
    size: u32,
}
impl PartialEq for Pair {
    fn eq(&self, o: &Pair) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Pair {}
impl PartialOrd for Pair {
    fn partial_cmp(&self, o: &Pair) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Pair {
    fn cmp(&self, o: &Pair) -> Ordering {
        // BinaryHeap pops the greatest: lowest rank, then leftmost
        o.rank.cmp(&self.rank).then(o.left.cmp(&self.left)).then(o.right.cmp(&self.right))
    }
}

impl Bpe {
    pub fn new(pre: Pre, merges: StrTable) -> Result<Bpe, MetaError> {
        let (merges, _) = Index::new(merges)?;
        Ok(Bpe { pre, merges, chars: byte_chars() })
    }

    /// Append the ids of the word `cps` (code points).
    pub fn word(&self, vocab: &Index, cps: &[u32], out: &mut Vec<u32>, scratch: &mut Vec<u8>) -> Result<(), MetaError> {
        let mut w: Vec<u8> = Vec::new();
        try_grow(&mut w, cps.len() * 4)?;
        let mut tmp = [0u8; 4];
        for &c in cps {
            let ch = char::from_u32(c).unwrap_or('\u{fffd}');
            if self.pre.byte_encode {
                for &b in ch.encode_utf8(&mut tmp).as_bytes() {
                    let m = char::from_u32(self.chars[b as usize]).unwrap();
                    let mut t2 = [0u8; 4];
                    w.extend_from_slice(m.encode_utf8(&mut t2).as_bytes());
                }
            } else {
                w.extend_from_slice(ch.encode_utf8(&mut tmp).as_bytes());
            }
        }
        if self.pre.has(T::PRE_IGNORE_MERGES) {
            if let Some(id) = vocab.get(&w) {
                return push(out, id);
            }
        }
        if self.pre.has(T::PRE_NEWLINE_WORDS) && w.iter().all(|&b| b == b'\n') {
            if let Some(id) = vocab.get(&w) {
                return push(out, id);
            }
        }
        let (start, mut len) = char_ranges(&w);
        let n = start.len();
        if n >= 2 {
            let mut nxt: Vec<i32> = (1..=n as i32).collect();
            nxt[n - 1] = -1;
            let mut prv: Vec<i32> = (-1..n as i32 - 1).collect();
            let mut heap = BinaryHeap::new();
            heap.try_reserve(3 * n).map_err(|_| crate::gguf::oom("the BPE merge queue"))?;
            let rank = |a: usize, b: usize, len: &[u32], scratch: &mut Vec<u8>| -> Option<u32> {
                scratch.clear();
                scratch.extend_from_slice(&w[start[a] as usize..(start[a] + len[a]) as usize]);
                scratch.push(b' ');
                scratch.extend_from_slice(&w[start[b] as usize..(start[b] + len[b]) as usize]);
                self.merges.get(scratch)
            };
            for i in 0..n - 1 {
                if let Some(r) = rank(i, i + 1, &len, scratch) {
                    heap.push(Pair { rank: r, left: i as u32, right: i as u32 + 1, size: len[i] + len[i + 1] });
                }
            }
            while let Some(p) = heap.pop() {
                let (left, right) = (p.left as usize, p.right as usize);
                if len[left] == 0 || len[right] == 0 || len[left] + len[right] != p.size {
                    continue; // stale: one side was merged since this pair was queued
                }
                len[left] += len[right];
                len[right] = 0;
                let nr = nxt[right];
                nxt[left] = nr;
                if nr >= 0 {
                    prv[nr as usize] = left as i32;
                }
                let pl = prv[left];
                if pl >= 0 {
                    let pl = pl as usize;
                    if let Some(r) = rank(pl, left, &len, scratch) {
                        heap.push(Pair { rank: r, left: pl as u32, right: left as u32, size: len[pl] + len[left] });
                    }
                }
                if nr >= 0 {
                    let nr = nr as usize;
                    if let Some(r) = rank(left, nr, &len, scratch) {
                        heap.push(Pair { rank: r, left: left as u32, right: nr as u32, size: len[left] + len[nr] });
                    }
                }
            }
        }
        for i in 0..n {
            if len[i] == 0 {
                continue;
            }
            let sym = &w[start[i] as usize..(start[i] + len[i]) as usize];
            if let Some(id) = vocab.get(sym) {
                push(out, id)?;
                continue;
            }
            // llama.cpp's fallback: one token per byte, dropping bytes it cannot find
            if self.pre.byte_encode {
                let s = core::str::from_utf8(sym).unwrap_or("");
                for ch in s.chars() {
                    if ch.is_ascii() {
                        if let Some(id) = vocab.get(&[ch as u8]) {
                            push(out, id)?;
                        }
                    }
                }
            } else {
                for &b in sym {
                    if let Some(id) = vocab.get(format!("<0x{:02X}>", b).as_bytes()) {
                        push(out, id)?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// A byte-level token's bytes (llama.cpp's llama_decode_text, with its marker for characters
/// outside the byte map: "[UNK_BYTE_0x<utf-8 hex><whole token>]").
pub fn byte_decode(text: &[u8], out: &mut Vec<u8>) {
    let s = core::str::from_utf8(text).unwrap_or("");
    for ch in s.chars() {
        match byte_of_char(ch as u32) {
            Some(b) => out.push(b),
            None => {
                out.extend_from_slice(b"[UNK_BYTE_0x");
                let mut tmp = [0u8; 4];
                for &b in ch.encode_utf8(&mut tmp).as_bytes() {
                    out.extend_from_slice(format!("{:02x}", b).as_bytes());
                }
                out.extend_from_slice(text);
                out.push(b']');
            }
        }
    }
}

// -- WPM -----------------------------------------------------------------------------------------

const CHINESE: [(u32, u32); 8] = [
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DBF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F),
    (0x2B920, 0x2CEAF),
    (0xF900, 0xFAFF),
    (0x2F800, 0x2FA1F),
];

/// llama.cpp's WPM preprocess: normalized words (code points).
pub fn wpm_words(text: &[u32], lowercase: bool, strip_accents: bool) -> Vec<Vec<u32>> {
    let mut words: Vec<Vec<u32>> = vec![Vec::new()];
    for &c in text {
        let cpt = if strip_accents { U::nfd_first(c) } else { c };
        let flags = U::flags(cpt);
        if U::is_whitespace(cpt) {
            if !words.last().unwrap().is_empty() {
                words.push(Vec::new());
            }
            continue;
        }
        if cpt == 0 || cpt == 0xFFFD || flags & U::CONTROL != 0 {
            continue;
        }
        if strip_accents && flags & U::ACCENT_MARK != 0 {
            continue;
        }
        let s = if lowercase { U::lower(cpt) } else { cpt };
        let chinese = CHINESE.iter().any(|&(a, b)| a <= cpt && cpt <= b);
        if flags & U::PUNCTUATION != 0 || (cpt < 0x7F && flags & U::SYMBOL != 0) || chinese {
            if !words.last().unwrap().is_empty() {
                words.push(Vec::new());
            }
            *words.last_mut().unwrap() = vec![s];
            words.push(Vec::new());
        } else {
            words.last_mut().unwrap().push(s);
        }
    }
    words.retain(|w| !w.is_empty());
    words
}

/// Append the ids of one fragment; `max_len`: the longest vocabulary entry in code points.
pub fn wpm(
    vocab: &Index,
    text: &[u32],
    max_len: usize,
    unk: Option<u32>,
    lowercase: bool,
    strip_accents: bool,
    out: &mut Vec<u32>,
) -> Result<(), MetaError> {
    for word in wpm_words(text, lowercase, strip_accents) {
        // "▁" + word as UTF-8, with the byte offset of each code point
        let mut bytes: Vec<u8> = Vec::new();
        let mut offs: Vec<usize> = Vec::new();
        let mut tmp = [0u8; 4];
        for c in core::iter::once(0x2581u32).chain(word.iter().copied()) {
            offs.push(bytes.len());
            bytes.extend_from_slice(char::from_u32(c).unwrap_or('\u{fffd}').encode_utf8(&mut tmp).as_bytes());
        }
        offs.push(bytes.len());
        let n = offs.len() - 1;
        let start = out.len();
        let mut i = 0;
        let mut unknown = false;
        while i < n {
            let mut j = n.min(i + max_len + 1);
            let mut hit = None;
            while j > i {
                if let Some(id) = vocab.get(&bytes[offs[i]..offs[j]]) {
                    hit = Some((id, j));
                    break;
                }
                j -= 1;
            }
            match hit {
                Some((id, j)) => {
                    push(out, id)?;
                    i = j;
                }
                None => {
                    unknown = true;
                    break;
                }
            }
        }
        if unknown {
            out.truncate(start);
        }
        if out.len() == start {
            if let Some(u) = unk {
                push(out, u)?;
            }
        }
    }
    Ok(())
}

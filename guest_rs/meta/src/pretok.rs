//! BPE pre-tokenizers (the twin of `realm/tokenizer/pretok.py`): a `tokenizer.ggml.pre` value names a
//! family of regexes (tables.rs, generated from pretok.py) and flags; `split` cuts a fragment into
//! words as llama.cpp's unicode_regex_split does — each regex splitting every piece the previous one
//! left, matches and the gaps between them all becoming pieces.

use crate::abi::{ERR_BAD_ARG, ERR_INTERNAL, ERR_OOM, ERR_UNSUPPORTED};
use crate::regex::{Mode, Regex, RunError, Runner};
use crate::tables as T;
use crate::unicode as U;
use crate::MetaError;

enum Run {
    Regex(Regex, Mode),
    Newlines,
    DigitGroups,
}

pub struct Pre {
    pub name: String,
    pub family: &'static str,
    pub flags: u8,
    pub byte_encode: bool,
    runs: Vec<Run>,
}

pub type Piece = (usize, usize); // code point range

impl Pre {
    /// The pre-tokenizer of a `tokenizer.ggml.pre` value (None: llama.cpp's "default").
    pub fn named(pre: Option<&str>) -> Result<Pre, MetaError> {
        let name = match pre {
            Some(p) => p,
            None => {
                crate::host::log(
                    2,
                    "tokenizer.ggml.pre is missing: using the 'default' pre-tokenizer, as llama.cpp does",
                );
                "default"
            }
        };
        let &(_, fam, flags) = match T::PRE_VALUES.iter().find(|e| e.0 == name) {
            Some(e) => e,
            None => {
                return Err(MetaError::new(
                    ERR_UNSUPPORTED,
                    format!(
                        "unsupported BPE pre-tokenizer tokenizer.ggml.pre = {}",
                        crate::pyfmt::repr_str(name)
                    ),
                ))
            }
        };
        let family = &T::FAMILIES[fam];
        let mut runs = Vec::new();
        for &(how, pattern) in family.regexes {
            let mode = match how {
                T::RUN_NEWLINES => {
                    runs.push(Run::Newlines);
                    continue;
                }
                T::RUN_DIGIT_GROUPS => {
                    runs.push(Run::DigitGroups);
                    continue;
                }
                T::RUN_CUSTOM => Mode::Custom,
                T::RUN_COLLAPSED => Mode::Collapsed,
                _ => Mode::Plain,
            };
            let re = Regex::new(pattern, mode).map_err(|e| MetaError::new(ERR_INTERNAL, e))?;
            runs.push(Run::Regex(re, mode));
        }
        Ok(Pre { name: name.to_string(), family: family.name, flags, byte_encode: family.byte_encode, runs })
    }

    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    /// The words of `text` (code points) as ranges of it.
    pub fn split(&self, text: &[u32], runner: &mut Runner) -> Result<Vec<Piece>, MetaError> {
        let mut pieces: Vec<Piece> = Vec::new();
        if !text.is_empty() {
            pieces.push((0, text.len()));
        }
        let mut view: Vec<u32> = Vec::new();
        for run in &self.runs {
            let mut out: Vec<Piece> = Vec::new();
            match run {
                Run::Newlines => {
                    for &(a, b) in &pieces {
                        let mut i = a;
                        while i < b {
                            let nl = text[i] == 0x0a;
                            let mut j = i;
                            while j < b && (text[j] == 0x0a) == nl {
                                j += 1;
                            }
                            out.push((i, j));
                            i = j;
                        }
                    }
                }
                Run::DigitGroups => {
                    for &(a, b) in &pieces {
                        digit_groups(text, a, b, &mut out);
                    }
                }
                Run::Regex(re, mode) => {
                    view.clear();
                    try_grow(&mut view, text.len())?;
                    match mode {
                        Mode::Custom => view.extend_from_slice(text),
                        Mode::Collapsed => view.extend(text.iter().map(|&c| U::collapsed(c))),
                        Mode::Plain => view.extend(
                            text.iter().map(|&c| if c > 0x7f && U::is_whitespace(c) { T::COLLAPSED_SPACE } else { c }),
                        ),
                    }
                    for &(a, b) in &pieces {
                        let sub = &view[a..b];
                        runner.steps = 0;
                        runner.budget = 1000 * sub.len() as u64 + 1_000_000;
                        let custom = *mode == Mode::Custom;
                        let mut pos = 0usize;
                        let res = re.for_each_match(sub, runner, |s, e| {
                            if s > pos {
                                if custom {
                                    for k in pos..s {
                                        out.push((a + k, a + k + 1)); // one piece per unmatched code point
                                    }
                                } else {
                                    out.push((a + pos, a + s));
                                }
                            }
                            if e > s {
                                out.push((a + s, a + e));
                            }
                            pos = pos.max(e);
                            Ok(())
                        });
                        match res {
                            Ok(()) => {}
                            Err(RunError::Budget) => {
                                return Err(MetaError::new(
                                    ERR_BAD_ARG,
                                    format!(
                                        "pre-tokenizer {} exceeded its step budget on a piece of {} code points",
                                        self.name,
                                        sub.len()
                                    ),
                                ))
                            }
                            Err(RunError::Memory) => {
                                return Err(MetaError::new(ERR_OOM, "pre-tokenizer: out of memory".into()))
                            }
                        }
                        if pos < sub.len() {
                            if custom {
                                for k in pos..sub.len() {
                                    out.push((a + k, a + k + 1));
                                }
                            } else {
                                out.push((a + pos, b));
                            }
                        }
                    }
                }
            }
            pieces = out;
        }
        Ok(pieces)
    }
}

/// llama.cpp's AFMoE digit splitter: every run of numbers cut into groups of three from the right;
/// no cut before the run, so preceding text joins its first group.
fn digit_groups(text: &[u32], a: usize, b: usize, out: &mut Vec<Piece>) {
    let mut cuts: Vec<usize> = Vec::new();
    let is_num = |c: u32| U::flags(c) & U::NUMBER != 0;
    let mut i = a;
    while i < b {
        if !is_num(text[i]) {
            i += 1;
            continue;
        }
        let mut j = i;
        while j < b && is_num(text[j]) {
            j += 1;
        }
        let at = i + (j - i) % 3;
        if at > i {
            cuts.push(at);
        }
        let mut c = at + 3;
        while c <= j {
            cuts.push(c);
            c += 3;
        }
        i = j;
    }
    if cuts.last() != Some(&b) {
        cuts.push(b);
    }
    let mut prev = a;
    for c in cuts {
        if c > prev {
            out.push((prev, c));
        }
        prev = c;
    }
}

pub fn try_grow<T>(v: &mut Vec<T>, extra: usize) -> Result<(), MetaError> {
    v.try_reserve(extra).map_err(|_| {
        MetaError::new(
            ERR_OOM,
            format!("out of memory ({} more items of {} bytes): raise the module's memory limit", extra, core::mem::size_of::<T>()),
        )
    })
}

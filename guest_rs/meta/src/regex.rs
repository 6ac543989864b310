//! A small backtracking regex engine over code points, for the pre-tokenizer regexes of tables.rs
//! exactly as `realm/tokenizer/pretok.py` runs them with Python's `re`: ordered alternation, greedy
//! quantifiers with backtracking, atomic lookaheads, `$` as end of piece, Python's rule for empty
//! matches in `finditer`. The class escapes depend on the mode (`Mode`): llama.cpp's own classes on
//! the raw text (custom splitters), or ASCII classes on the collapsed / whitespace-replaced view.
//!
//! Matching uses an explicit, fallibly grown backtrack stack (no recursion except one level per
//! nested lookahead) and a step budget, so no input can overflow the wasm stack or hang.

use crate::tables as T;
use crate::unicode as U;

#[derive(Clone, Copy, PartialEq)]
pub enum Mode {
    Custom,    // \p{L,N,M,Han,LnH} and \s from llama.cpp's tables, on the raw text
    Collapsed, // \p{X} -> [placeholder + ASCII members]; \s \d ASCII; on the collapsed view
    Plain,     // \s \d ASCII; on the text with non-ASCII whitespace replaced by \v
}

#[derive(Clone)]
enum Item {
    Range(u32, u32),
    Cat(u8), // llama.cpp category flags (any bit)
    Ws,      // llama.cpp whitespace
    Han,
    LetterNotHan,
}

#[derive(Clone)]
struct Set {
    items: Vec<Item>,
    neg: bool,
}

impl Set {
    fn has(&self, c: u32) -> bool {
        let mut hit = false;
        for it in &self.items {
            hit = match *it {
                Item::Range(a, b) => a <= c && c <= b,
                Item::Cat(m) => U::flags(c) & m != 0,
                Item::Ws => U::is_whitespace(c),
                Item::Han => U::is_han(c),
                Item::LetterNotHan => U::flags(c) & U::LETTER != 0 && !U::is_han(c),
            };
            if hit {
                break;
            }
        }
        hit != self.neg
    }
}

enum Node {
    Set(usize),
    Seq(Vec<Node>),
    Alt(Vec<Node>),
    Repeat(Box<Node>, u32, u32), // greedy; max u32::MAX = unbounded
    Look(Box<Node>, bool),       // lookahead, negated
    End,
    Start,
    WordBoundary(bool),
}

#[derive(Clone, Copy)]
enum Inst {
    Set(usize),
    Split(usize, usize),
    Jmp(usize),
    Rep { set: usize, min: u32, max: u32 },
    Look { prog: usize, neg: bool },
    End,
    Start,
    WordBoundary(bool),
    Match,
}

pub struct Regex {
    sets: Vec<Set>,
    progs: Vec<Vec<Inst>>, // progs[0] the pattern, others lookahead bodies
}

struct Parser<'a> {
    p: &'a [char],
    i: usize,
    mode: Mode,
    sets: Vec<Set>,
}

const ASCII_SPACE: [(u32, u32); 2] = [(0x09, 0x0d), (0x20, 0x20)];

fn ascii_word(c: u32) -> bool {
    c < 0x80 && ((c as u8).is_ascii_alphanumeric() || c == b'_' as u32)
}

impl<'a> Parser<'a> {
    fn err<T>(&self, what: &str) -> Result<T, String> {
        let s: String = self.p.iter().collect();
        Err(format!("pre-tokenizer regex {:?}: {} at {}", s, what, self.i))
    }

    fn peek(&self) -> Option<char> {
        self.p.get(self.i).copied()
    }

    fn add_set(&mut self, s: Set) -> usize {
        self.sets.push(s);
        self.sets.len() - 1
    }

    fn alt(&mut self) -> Result<Node, String> {
        let mut alts = vec![self.seq()?];
        while self.peek() == Some('|') {
            self.i += 1;
            alts.push(self.seq()?);
        }
        Ok(if alts.len() == 1 { alts.pop().unwrap() } else { Node::Alt(alts) })
    }

    fn seq(&mut self) -> Result<Node, String> {
        let mut items = Vec::new();
        while let Some(c) = self.peek() {
            if c == '|' || c == ')' {
                break;
            }
            let atom = self.atom()?;
            items.push(self.quantified(atom)?);
        }
        Ok(Node::Seq(items))
    }

    fn number(&mut self) -> Option<u32> {
        let start = self.i;
        while matches!(self.peek(), Some('0'..='9')) {
            self.i += 1;
        }
        if self.i == start {
            return None;
        }
        let s: String = self.p[start..self.i].iter().collect();
        s.parse().ok()
    }

    fn quantified(&mut self, atom: Node) -> Result<Node, String> {
        let (min, max) = match self.peek() {
            Some('*') => (0, u32::MAX),
            Some('+') => (1, u32::MAX),
            Some('?') => (0, 1),
            Some('{') => {
                let save = self.i;
                self.i += 1;
                let lo = self.number();
                let (lo, hi) = match (lo, self.peek()) {
                    (Some(lo), Some('}')) => (lo, lo),
                    (Some(lo), Some(',')) => {
                        self.i += 1;
                        match (self.number(), self.peek()) {
                            (Some(hi), Some('}')) => (lo, hi),
                            (None, Some('}')) => (lo, u32::MAX),
                            _ => {
                                self.i = save;
                                return Ok(atom);
                            }
                        }
                    }
                    _ => {
                        self.i = save; // not a quantifier: a literal '{' (Python's rule)
                        return Ok(atom);
                    }
                };
                if hi < lo {
                    return self.err("bad repetition range");
                }
                (lo, hi)
            }
            _ => return Ok(atom),
        };
        self.i += 1;
        if matches!(self.peek(), Some('?') | Some('+')) {
            return self.err("lazy or possessive quantifiers are not supported");
        }
        if matches!(atom, Node::Look(..) | Node::End | Node::Start | Node::WordBoundary(_)) {
            return self.err("quantified assertion");
        }
        Ok(Node::Repeat(Box::new(atom), min, max))
    }

    fn atom(&mut self) -> Result<Node, String> {
        let c = self.peek().unwrap();
        self.i += 1;
        match c {
            '(' => {
                let mut look = None;
                if self.peek() == Some('?') {
                    match self.p.get(self.i + 1) {
                        Some(':') => {}
                        Some('=') => look = Some(false),
                        Some('!') => look = Some(true),
                        _ => return self.err("unsupported group"),
                    }
                    self.i += 2;
                }
                let inner = self.alt()?;
                if self.peek() != Some(')') {
                    return self.err("missing ')'");
                }
                self.i += 1;
                Ok(match look {
                    Some(neg) => Node::Look(Box::new(inner), neg),
                    None => inner,
                })
            }
            '[' => self.class(),
            '$' => Ok(Node::End),
            '^' => Ok(Node::Start),
            '.' => {
                let s = self.add_set(Set { items: vec![Item::Range(0x0a, 0x0a)], neg: true });
                Ok(Node::Set(s))
            }
            '\\' => {
                let e = match self.peek() {
                    Some(e) => e,
                    None => return self.err("trailing backslash"),
                };
                match e {
                    'Z' => {
                        self.i += 1;
                        Ok(Node::End)
                    }
                    'b' | 'B' => {
                        self.i += 1;
                        Ok(Node::WordBoundary(e == 'b'))
                    }
                    _ => {
                        let mut items = Vec::new();
                        let neg = self.escape(&mut items, false)?;
                        let s = self.add_set(Set { items, neg });
                        Ok(Node::Set(s))
                    }
                }
            }
            ')' | '|' | '*' | '+' | '?' => self.err("misplaced metacharacter"),
            c => {
                let s = self.add_set(Set { items: vec![Item::Range(c as u32, c as u32)], neg: false });
                Ok(Node::Set(s))
            }
        }
    }

    /// Parse the escape after a backslash (at self.i) into `items`; returns whether it is a negated
    /// class (\S, \D, \W: only outside brackets).
    fn escape(&mut self, items: &mut Vec<Item>, in_class: bool) -> Result<bool, String> {
        let e = self.peek().unwrap();
        self.i += 1;
        let lit = |c: u32| Item::Range(c, c);
        let space = |items: &mut Vec<Item>, mode: Mode| {
            if mode == Mode::Custom {
                items.push(Item::Ws);
            } else {
                items.extend(ASCII_SPACE.iter().map(|&(a, b)| Item::Range(a, b)));
            }
        };
        match e {
            's' => space(items, self.mode),
            'S' | 'D' | 'W' => {
                if in_class {
                    return self.err("negated class escape inside a class");
                }
                match e {
                    'S' => space(items, self.mode),
                    'D' => items.push(Item::Range(0x30, 0x39)),
                    _ => {
                        items.extend([Item::Range(0x30, 0x39), Item::Range(0x41, 0x5a), lit(0x5f), Item::Range(0x61, 0x7a)])
                    }
                }
                return Ok(true);
            }
            'd' => {
                if self.mode == Mode::Custom {
                    return self.err("\\d in a custom splitter");
                }
                items.push(Item::Range(0x30, 0x39));
            }
            'w' => items.extend([Item::Range(0x30, 0x39), Item::Range(0x41, 0x5a), lit(0x5f), Item::Range(0x61, 0x7a)]),
            'p' => {
                if self.peek() != Some('{') {
                    return self.err("\\p without {");
                }
                let start = self.i + 1;
                let end = match self.p[start..].iter().position(|&c| c == '}') {
                    Some(k) => start + k,
                    None => return self.err("unterminated \\p{"),
                };
                let name: String = self.p[start..end].iter().collect();
                self.i = end + 1;
                self.property(&name, items)?;
            }
            'r' => items.push(lit(0x0d)),
            'n' => items.push(lit(0x0a)),
            't' => items.push(lit(0x09)),
            'v' => items.push(lit(0x0b)),
            'f' => items.push(lit(0x0c)),
            'x' | 'u' | 'U' => {
                let n = match e {
                    'x' => 2,
                    'u' => 4,
                    _ => 8,
                };
                if self.i + n > self.p.len() {
                    return self.err("short hex escape");
                }
                let s: String = self.p[self.i..self.i + n].iter().collect();
                let v = u32::from_str_radix(&s, 16).or_else(|_| self.err("bad hex escape"))?;
                self.i += n;
                items.push(lit(v));
            }
            c if c.is_ascii_alphanumeric() => return self.err("unsupported escape"),
            c => items.push(lit(c as u32)),
        }
        Ok(false)
    }

    fn property(&mut self, name: &str, items: &mut Vec<Item>) -> Result<(), String> {
        if self.mode == Mode::Custom {
            items.push(match name {
                "L" => Item::Cat(U::LETTER),
                "N" => Item::Cat(U::NUMBER),
                "M" => Item::Cat(U::ACCENT_MARK),
                "Han" => Item::Han,
                "LnH" => Item::LetterNotHan,
                _ => return self.err("unsupported class in a custom splitter"),
            });
            return Ok(());
        }
        let (ch, body) = match T::COLLAPSED_CLASSES.iter().find(|e| e.0 == name) {
            Some(&(_, ch, body)) => (ch, body),
            None => return self.err("unsupported \\p{..} class"),
        };
        items.push(Item::Range(ch, ch));
        let body: Vec<char> = body.chars().collect();
        let mut sub = Parser { p: &body, i: 0, mode: Mode::Plain, sets: Vec::new() };
        sub.class_items(items, body.len())?;
        Ok(())
    }

    /// Items of a class body up to (not including) `]` or index `end`.
    fn class_items(&mut self, items: &mut Vec<Item>, end: usize) -> Result<(), String> {
        let first = self.i;
        while self.i < end {
            let c = self.p[self.i];
            if c == ']' && self.i > first {
                break;
            }
            let lo = if c == '\\' {
                self.i += 1;
                if self.i >= end {
                    return self.err("trailing backslash");
                }
                let before = items.len();
                self.escape(items, true)?;
                match (items.len() - before, items.last()) {
                    (1, Some(&Item::Range(a, b))) if a == b => {
                        items.pop();
                        a
                    }
                    _ => continue, // a class escape: no range
                }
            } else {
                self.i += 1;
                c as u32
            };
            // a range lo-hi unless '-' is last
            if self.i + 1 < end && self.p[self.i] == '-' && self.p[self.i + 1] != ']' {
                self.i += 1;
                let hc = self.p[self.i];
                let hi = if hc == '\\' {
                    self.i += 1;
                    let mut tmp = Vec::new();
                    self.escape(&mut tmp, true)?;
                    match tmp.as_slice() {
                        [Item::Range(a, b)] if a == b => *a,
                        _ => return self.err("bad class range"),
                    }
                } else {
                    self.i += 1;
                    hc as u32
                };
                if hi < lo {
                    return self.err("bad class range");
                }
                items.push(Item::Range(lo, hi));
            } else {
                items.push(Item::Range(lo, lo));
            }
        }
        Ok(())
    }

    fn class(&mut self) -> Result<Node, String> {
        let mut neg = false;
        if self.peek() == Some('^') {
            neg = true;
            self.i += 1;
        }
        let mut items = Vec::new();
        self.class_items(&mut items, self.p.len())?;
        if self.peek() != Some(']') {
            return self.err("missing ']'");
        }
        self.i += 1;
        let s = self.add_set(Set { items, neg });
        Ok(Node::Set(s))
    }
}

struct Compiler {
    progs: Vec<Vec<Inst>>,
}

impl Compiler {
    fn emit(&mut self, prog: usize, node: &Node) {
        match node {
            Node::Set(s) => self.progs[prog].push(Inst::Set(*s)),
            Node::Seq(items) => {
                for n in items {
                    self.emit(prog, n);
                }
            }
            Node::Alt(alts) => {
                let mut jumps = Vec::new();
                for (k, a) in alts.iter().enumerate() {
                    if k + 1 < alts.len() {
                        let split = self.progs[prog].len();
                        self.progs[prog].push(Inst::Split(split + 1, 0));
                        self.emit(prog, a);
                        jumps.push(self.progs[prog].len());
                        self.progs[prog].push(Inst::Jmp(0));
                        let next = self.progs[prog].len();
                        self.progs[prog][split] = Inst::Split(split + 1, next);
                    } else {
                        self.emit(prog, a);
                    }
                }
                let end = self.progs[prog].len();
                for j in jumps {
                    self.progs[prog][j] = Inst::Jmp(end);
                }
            }
            Node::Repeat(body, min, max) => {
                if let Node::Set(s) = **body {
                    self.progs[prog].push(Inst::Rep { set: s, min: *min, max: *max });
                    return;
                }
                for _ in 0..*min {
                    self.emit(prog, body);
                }
                if *max == u32::MAX {
                    let split = self.progs[prog].len();
                    self.progs[prog].push(Inst::Split(split + 1, 0));
                    self.emit(prog, body);
                    self.progs[prog].push(Inst::Jmp(split));
                    let end = self.progs[prog].len();
                    self.progs[prog][split] = Inst::Split(split + 1, end);
                } else {
                    let mut splits = Vec::new();
                    for _ in *min..*max {
                        splits.push(self.progs[prog].len());
                        self.progs[prog].push(Inst::Split(0, 0));
                        self.emit(prog, body);
                    }
                    let end = self.progs[prog].len();
                    for s in splits {
                        self.progs[prog][s] = Inst::Split(s + 1, end);
                    }
                }
            }
            Node::Look(body, neg) => {
                let sub = self.progs.len();
                self.progs.push(Vec::new());
                self.emit(sub, body);
                self.progs[sub].push(Inst::Match);
                self.progs[prog].push(Inst::Look { prog: sub, neg: *neg });
            }
            Node::End => self.progs[prog].push(Inst::End),
            Node::Start => self.progs[prog].push(Inst::Start),
            Node::WordBoundary(b) => self.progs[prog].push(Inst::WordBoundary(*b)),
        }
    }
}

#[derive(Clone, Copy)]
enum Bt {
    Alt { pc: usize, pos: usize },
    Rep { pc: usize, start: usize, count: usize, min: usize },
}

/// Why a match could not be completed.
pub enum RunError {
    Budget,
    Memory,
}

pub struct Runner {
    stack: Vec<Bt>,
    pub steps: u64,
    pub budget: u64,
}

impl Runner {
    pub fn new() -> Runner {
        Runner { stack: Vec::new(), steps: 0, budget: u64::MAX }
    }
}

impl Regex {
    pub fn new(pattern: &str, mode: Mode) -> Result<Regex, String> {
        let chars: Vec<char> = pattern.chars().collect();
        let mut p = Parser { p: &chars, i: 0, mode, sets: Vec::new() };
        let ast = p.alt()?;
        if p.i != chars.len() {
            return p.err("unbalanced ')'");
        }
        let mut c = Compiler { progs: vec![Vec::new()] };
        c.emit(0, &ast);
        c.progs[0].push(Inst::Match);
        Ok(Regex { sets: p.sets, progs: c.progs })
    }

    /// The end of the first match of program `prog` starting at `start` in `text`, or None;
    /// `reject_empty`: an empty match does not count (Python's finditer after an empty match).
    fn run(&self, prog: usize, text: &[u32], start: usize, reject_empty: bool, r: &mut Runner) -> Result<Option<usize>, RunError> {
        let code = &self.progs[prog];
        let base = r.stack.len(); // lookaheads share the stack above the caller's entries
        let mut pc = 0usize;
        let mut pos = start;
        let n = text.len();
        loop {
            r.steps += 1;
            if r.steps > r.budget {
                r.stack.truncate(base);
                return Err(RunError::Budget);
            }
            let ok = match code[pc] {
                Inst::Set(s) => {
                    if pos < n && self.sets[s].has(text[pos]) {
                        pos += 1;
                        pc += 1;
                        true
                    } else {
                        false
                    }
                }
                Inst::Split(a, b) => {
                    push(&mut r.stack, Bt::Alt { pc: b, pos }, base)?;
                    pc = a;
                    true
                }
                Inst::Jmp(a) => {
                    pc = a;
                    true
                }
                Inst::Rep { set, min, max } => {
                    let limit = if max == u32::MAX { n - pos } else { (max as usize).min(n - pos) };
                    let mut k = 0;
                    while k < limit && self.sets[set].has(text[pos + k]) {
                        k += 1;
                    }
                    r.steps += k as u64;
                    if k < min as usize {
                        false
                    } else {
                        if k > min as usize {
                            push(&mut r.stack, Bt::Rep { pc: pc + 1, start: pos, count: k, min: min as usize }, base)?;
                        }
                        pos += k;
                        pc += 1;
                        true
                    }
                }
                Inst::Look { prog: sub, neg } => {
                    let hit = self.run(sub, text, pos, false, r)?.is_some();
                    if hit != neg {
                        pc += 1;
                        true
                    } else {
                        false
                    }
                }
                Inst::End => {
                    pc += 1;
                    pos == n
                }
                Inst::Start => {
                    pc += 1;
                    pos == 0
                }
                Inst::WordBoundary(want) => {
                    let before = pos > 0 && ascii_word(text[pos - 1]);
                    let after = pos < n && ascii_word(text[pos]);
                    pc += 1;
                    (before != after) == want
                }
                Inst::Match => {
                    if !(reject_empty && pos == start) {
                        r.stack.truncate(base);
                        return Ok(Some(pos));
                    }
                    false
                }
            };
            if ok {
                continue;
            }
            // backtrack
            loop {
                if r.stack.len() == base {
                    return Ok(None);
                }
                match r.stack.pop().unwrap() {
                    Bt::Alt { pc: p, pos: q } => {
                        pc = p;
                        pos = q;
                    }
                    Bt::Rep { pc: p, start: s, count, min } => {
                        let c = count - 1;
                        if c > min {
                            r.stack.push(Bt::Rep { pc: p, start: s, count: c, min });
                        }
                        pc = p;
                        pos = s + c;
                    }
                }
                break;
            }
        }
    }

    /// Python's `finditer` over `text`: the (start, end) of each match, calling `f` for each.
    pub fn for_each_match<F: FnMut(usize, usize) -> Result<(), RunError>>(
        &self,
        text: &[u32],
        r: &mut Runner,
        mut f: F,
    ) -> Result<(), RunError> {
        let n = text.len();
        let mut search = 0usize;
        let mut must_advance = false;
        while search <= n {
            let mut found = None;
            let mut s = search;
            while s <= n {
                if let Some(e) = self.run(0, text, s, must_advance && s == search, r)? {
                    found = Some((s, e));
                    break;
                }
                s += 1;
            }
            match found {
                None => break,
                Some((a, b)) => {
                    f(a, b)?;
                    must_advance = a == b;
                    search = b;
                }
            }
        }
        Ok(())
    }
}

fn push(stack: &mut Vec<Bt>, e: Bt, _base: usize) -> Result<(), RunError> {
    if stack.len() == stack.capacity() && stack.try_reserve(stack.len().max(256)).is_err() {
        return Err(RunError::Memory);
    }
    stack.push(e);
    Ok(())
}

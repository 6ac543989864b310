//! Python's spelling of values inside error messages (`repr` of str and bytes, exact big integers),
//! so the module's messages read like the Python oracle's (`realm/gguf.py`, `realm/config.py`).

/// `repr(s)` of a Python str: single quotes unless the text holds `'` and no `"`; escapes for
/// backslash, the quote, `\t \n \r` and non-printable characters (ASCII controls, U+007F..U+00A0,
/// U+00AD; other non-ASCII characters are taken as printable, as `str.isprintable` says for nearly all).
pub fn repr_str(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || (0x7f..=0xa0).contains(&(c as u32)) || c as u32 == 0xad => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// `repr(b)` of Python bytes.
pub fn repr_bytes(b: &[u8]) -> String {
    let quote = if b.contains(&b'\'') && !b.contains(&b'"') {
        b'"'
    } else {
        b'\''
    };
    let mut out = String::from("b");
    out.push(quote as char);
    for &x in b {
        match x {
            b'\\' => out.push_str("\\\\"),
            b'\t' => out.push_str("\\t"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            x if x == quote => {
                out.push('\\');
                out.push(x as char);
            }
            0x20..=0x7e => out.push(x as char),
            x => out.push_str(&format!("\\x{:02x}", x)),
        }
    }
    out.push(quote as char);
    out
}

/// An unsigned integer of any size as little-endian u64 limbs (products of tensor dimensions).
pub struct BigUint {
    limbs: Vec<u64>,
}

impl BigUint {
    pub fn one() -> BigUint {
        BigUint { limbs: vec![1] }
    }

    pub fn mul_u64(&mut self, v: u64) {
        let mut carry: u128 = 0;
        for limb in self.limbs.iter_mut() {
            let p = *limb as u128 * v as u128 + carry;
            *limb = p as u64;
            carry = p >> 64;
        }
        if carry != 0 {
            self.limbs.push(carry as u64);
        }
        while self.limbs.len() > 1 && *self.limbs.last().unwrap() == 0 {
            self.limbs.pop();
        }
    }

    /// The value if it fits a u128.
    pub fn to_u128(&self) -> Option<u128> {
        match self.limbs.len() {
            1 => Some(self.limbs[0] as u128),
            2 => Some(self.limbs[0] as u128 | (self.limbs[1] as u128) << 64),
            _ => None,
        }
    }

    pub fn to_decimal(&self) -> String {
        let mut limbs = self.limbs.clone();
        let mut parts: Vec<u64> = Vec::new(); // base 10^19 digits, least significant first
        const BASE: u128 = 10_000_000_000_000_000_000;
        loop {
            let mut rem: u128 = 0;
            for limb in limbs.iter_mut().rev() {
                let cur = rem << 64 | *limb as u128;
                *limb = (cur / BASE) as u64;
                rem = cur % BASE;
            }
            parts.push(rem as u64);
            while limbs.len() > 1 && *limbs.last().unwrap() == 0 {
                limbs.pop();
            }
            if limbs.len() == 1 && limbs[0] == 0 {
                break;
            }
        }
        let mut s = format!("{}", parts.last().unwrap());
        for p in parts.iter().rev().skip(1) {
            s.push_str(&format!("{:019}", p));
        }
        s
    }
}

/// `repr(x)` of a Python float: the shortest text that reads back as `x`, in Python's layout
/// (`1.0`, `0.0001`, `1e-05`, `1e+16`, `inf`, `nan`).
pub fn repr_float(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf".into() } else { "-inf".into() };
    }
    // Rust's `{:e}` gives the shortest round-trip digits: d[.ddd]e<exp>
    let e = format!("{:e}", x);
    let (mant, exp) = e.split_once('e').unwrap();
    let exp: i32 = exp.parse().unwrap();
    let (sign, mant) = if let Some(m) = mant.strip_prefix('-') {
        ("-", m)
    } else {
        ("", mant)
    };
    let digits: String = mant.chars().filter(|c| *c != '.').collect();
    if (-4..16).contains(&exp) {
        let n = digits.len() as i32;
        let s = if exp >= 0 {
            if n > exp + 1 {
                format!("{}.{}", &digits[..(exp + 1) as usize], &digits[(exp + 1) as usize..])
            } else {
                format!("{}{}.0", digits, "0".repeat((exp + 1 - n) as usize))
            }
        } else {
            format!("0.{}{}", "0".repeat((-exp - 1) as usize), digits)
        };
        format!("{}{}", sign, s)
    } else {
        let m = if digits.len() > 1 {
            format!("{}.{}", &digits[..1], &digits[1..])
        } else {
            digits
        };
        format!("{}{}e{}{:02}", sign, m, if exp < 0 { '-' } else { '+' }, exp.abs())
    }
}

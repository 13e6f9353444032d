//! Redis glob patterns (`KEYS`, `SCAN MATCH`, `CONFIG GET`): `*`, `?`,
//! `[abc]`, `[^a-z]`, and `\` to escape. Iterative with one backtrack point,
//! so a hostile pattern costs O(pattern * subject), not exponential time.

/// Whether `subject` matches `pattern`, optionally ignoring ASCII case.
pub fn matches(pattern: &[u8], subject: &[u8], nocase: bool) -> bool {
    let eq = |a: u8, b: u8| {
        if nocase {
            a.eq_ignore_ascii_case(&b)
        } else {
            a == b
        }
    };
    let (mut p, mut s) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while s < subject.len() {
        if p < pattern.len() {
            match pattern[p] {
                b'*' => {
                    while p < pattern.len() && pattern[p] == b'*' {
                        p += 1;
                    }
                    if p == pattern.len() {
                        return true;
                    }
                    star = Some((p, s));
                    continue;
                }
                b'?' => {
                    p += 1;
                    s += 1;
                    continue;
                }
                b'[' => {
                    let (matched, next) = class(pattern, p, subject[s], nocase);
                    if matched {
                        p = next;
                        s += 1;
                        continue;
                    }
                }
                b'\\' if p + 1 < pattern.len() => {
                    if eq(pattern[p + 1], subject[s]) {
                        p += 2;
                        s += 1;
                        continue;
                    }
                }
                c => {
                    if eq(c, subject[s]) {
                        p += 1;
                        s += 1;
                        continue;
                    }
                }
            }
        }
        match star {
            Some((sp, ss)) => {
                p = sp;
                s = ss + 1;
                star = Some((sp, ss + 1));
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Matches one byte against the class starting at `pattern[start] == '['`;
/// returns whether it matched and where the pattern continues. As Redis
/// reads a class: one left open runs to the end of the pattern (`a[*`
/// matches `a*`), a range may end in `]` (`[a-]` is `]` to `a`), and with
/// `nocase` a range's ends and the byte are lowercased while an escaped
/// byte is still compared exactly.
fn class(pattern: &[u8], start: usize, c: u8, nocase: bool) -> (bool, usize) {
    let lower = |b: u8| if nocase { b.to_ascii_lowercase() } else { b };
    let mut i = start + 1;
    let negate = pattern.get(i) == Some(&b'^');
    if negate {
        i += 1;
    }
    let mut matched = false;
    loop {
        let Some(&b) = pattern.get(i) else {
            return (matched != negate, pattern.len());
        };
        if b == b']' {
            break;
        }
        if b == b'\\' && i + 1 < pattern.len() {
            matched |= pattern[i + 1] == c;
            i += 2;
        } else if pattern.get(i + 1) == Some(&b'-') && i + 2 < pattern.len() {
            let (mut lo, mut hi) = (lower(b), lower(pattern[i + 2]));
            if lo > hi {
                std::mem::swap(&mut lo, &mut hi);
            }
            matched |= (lo..=hi).contains(&lower(c));
            i += 3;
        } else {
            matched |= lower(b) == lower(c);
            i += 1;
        }
    }
    (matched != negate, i + 1)
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn redis_glob_cases() {
        let yes: &[(&str, &str)] = &[
            ("*", "anything"),
            ("h?llo", "hello"),
            ("h*llo", "heeeello"),
            ("h[ae]llo", "hallo"),
            ("h[^e]llo", "hallo"),
            ("h[a-b]llo", "hbllo"),
            ("user:*:name", "user:42:name"),
            ("a\\*b", "a*b"),
            ("", ""),
        ];
        for (p, s) in yes {
            assert!(matches(p.as_bytes(), s.as_bytes(), false), "{p} ~ {s}");
        }
        let no: &[(&str, &str)] = &[
            ("h?llo", "hllo"),
            ("h[^e]llo", "hello"),
            ("a*c", "abd"),
            ("", "a"),
        ];
        for (p, s) in no {
            assert!(!matches(p.as_bytes(), s.as_bytes(), false), "{p} !~ {s}");
        }
        assert!(matches(b"MAXMEM*", b"maxmemory", true));
        // Redis's reading of odd classes (a differential run against
        // redis-server 7.0.15): one left open takes the rest of the
        // pattern, and a range may end in `]`.
        assert!(matches(b"a[*", b"a*", false));
        assert!(!matches(b"a[*", b"ab", false));
        assert!(matches(b"[^", b"x", false));
        assert!(!matches(b"a[", b"a", false));
        for c in ["]", "^", "_", "a"] {
            assert!(matches(b"[a-]", c.as_bytes(), false), "[a-] ~ {c}");
        }
        assert!(!matches(b"[a-]", b"-", false));
        assert!(!matches(b"[a-]", b"b", false));
        // Without case, a range's ends are lowercased ([A-z] is [a-z]),
        // and an escaped byte in a class is still compared exactly.
        assert!(matches(b"[A-z]", b"Q", true));
        assert!(!matches(b"[A-z]", b"_", true));
        assert!(matches(b"[A-z]", b"_", false));
        assert!(!matches(b"[\\A]", b"a", true));
        assert!(matches(b"[A]", b"a", true));
    }

    #[test]
    fn hostile_patterns_finish() {
        let subject = vec![b'a'; 5000];
        assert!(!matches(b"*a*a*a*a*a*a*a*a*b", &subject, false));
    }
}

//! A unified diff of two small texts (machine configs: tens to hundreds of
//! lines), line by line, with three lines of context, as `diff -u` prints it.

use std::fmt::Write as _;

/// Lines of context around each change.
const CONTEXT: usize = 3;
/// Above this many line pairs the longest-common-subsequence table would be too
/// big; the diff then replaces the whole text.
const MAX_CELLS: usize = 4_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Equal { old: usize, new: usize },
    Delete { old: usize },
    Insert { new: usize },
}

/// `diff -u old new` with the given file labels; empty when the texts are equal.
pub fn unified(old: &str, new: &str, old_label: &str, new_label: &str) -> String {
    if old == new {
        return String::new();
    }
    let a: Vec<&str> = old.split_inclusive('\n').collect();
    let b: Vec<&str> = new.split_inclusive('\n').collect();
    let ops = script(&a, &b);

    let mut out = format!("--- {old_label}\n+++ {new_label}\n");
    let changes: Vec<usize> = ops
        .iter()
        .enumerate()
        .filter(|(_, op)| !matches!(op, Op::Equal { .. }))
        .map(|(i, _)| i)
        .collect();
    // Group changes whose gap of equal lines is small enough to share context.
    let mut groups: Vec<(usize, usize)> = Vec::new();
    for &i in &changes {
        match groups.last_mut() {
            Some((_, last)) if i - *last <= 2 * CONTEXT + 1 => *last = i,
            _ => groups.push((i, i)),
        }
    }
    // Where each op starts in the old and the new text.
    let mut positions = Vec::with_capacity(ops.len() + 1);
    let (mut o, mut n) = (0usize, 0usize);
    for op in &ops {
        positions.push((o, n));
        match op {
            Op::Equal { .. } => (o, n) = (o + 1, n + 1),
            Op::Delete { .. } => o += 1,
            Op::Insert { .. } => n += 1,
        }
    }
    positions.push((o, n));

    for (first, last) in groups {
        let start = first.saturating_sub(CONTEXT);
        let end = (last + CONTEXT + 1).min(ops.len());
        let hunk = &ops[start..end];
        let old_count = hunk
            .iter()
            .filter(|op| !matches!(op, Op::Insert { .. }))
            .count();
        let new_count = hunk
            .iter()
            .filter(|op| !matches!(op, Op::Delete { .. }))
            .count();
        let (o0, n0) = positions[start];
        let line_no = |pos: usize, count: usize| if count == 0 { pos } else { pos + 1 };
        let _ = writeln!(
            out,
            "@@ -{},{} +{},{} @@",
            line_no(o0, old_count),
            old_count,
            line_no(n0, new_count),
            new_count
        );
        for op in hunk {
            let (mark, line) = match *op {
                Op::Equal { old, .. } => (' ', a[old]),
                Op::Delete { old } => ('-', a[old]),
                Op::Insert { new } => ('+', b[new]),
            };
            out.push(mark);
            out.push_str(line);
            if !line.ends_with('\n') {
                out.push_str("\n\\ No newline at end of file\n");
            }
        }
    }
    out
}

/// An edit script turning `a` into `b` (longest common subsequence).
fn script(a: &[&str], b: &[&str]) -> Vec<Op> {
    let (n, m) = (a.len(), b.len());
    // Common prefix and suffix need no table.
    let prefix = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let suffix = a[prefix..]
        .iter()
        .rev()
        .zip(b[prefix..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let (a_mid, b_mid) = (&a[prefix..n - suffix], &b[prefix..m - suffix]);

    let mut ops: Vec<Op> = (0..prefix).map(|i| Op::Equal { old: i, new: i }).collect();
    let (h, w) = (a_mid.len(), b_mid.len());
    if (h + 1).saturating_mul(w + 1) > MAX_CELLS {
        ops.extend((0..h).map(|i| Op::Delete { old: prefix + i }));
        ops.extend((0..w).map(|j| Op::Insert { new: prefix + j }));
    } else {
        // lcs[i][j]: length of the LCS of a_mid[i..] and b_mid[j..].
        let mut lcs = vec![0u32; (h + 1) * (w + 1)];
        let at = |i: usize, j: usize| i * (w + 1) + j;
        for i in (0..h).rev() {
            for j in (0..w).rev() {
                lcs[at(i, j)] = if a_mid[i] == b_mid[j] {
                    lcs[at(i + 1, j + 1)] + 1
                } else {
                    lcs[at(i + 1, j)].max(lcs[at(i, j + 1)])
                };
            }
        }
        let (mut i, mut j) = (0, 0);
        while i < h || j < w {
            if i < h && j < w && a_mid[i] == b_mid[j] {
                ops.push(Op::Equal {
                    old: prefix + i,
                    new: prefix + j,
                });
                i += 1;
                j += 1;
            } else if i < h && (j == w || lcs[at(i + 1, j)] >= lcs[at(i, j + 1)]) {
                ops.push(Op::Delete { old: prefix + i });
                i += 1;
            } else {
                ops.push(Op::Insert { new: prefix + j });
                j += 1;
            }
        }
    }
    ops.extend((0..suffix).map(|k| Op::Equal {
        old: n - suffix + k,
        new: m - suffix + k,
    }));
    ops
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_texts_have_no_diff() {
        assert_eq!(unified("a\nb\n", "a\nb\n", "a", "b"), "");
    }

    #[test]
    fn one_change_with_context() {
        let old = "1\n2\n3\n4\n5\n6\n7\n8\n9\n";
        let new = "1\n2\n3\n4\nfive\n6\n7\n8\n9\n";
        assert_eq!(
            unified(old, new, "a/m", "b/m"),
            "--- a/m\n+++ b/m\n@@ -2,7 +2,7 @@\n 2\n 3\n 4\n-5\n+five\n 6\n 7\n 8\n"
        );
    }

    #[test]
    fn separate_hunks_and_additions() {
        let old: String = (1..=20).map(|i| format!("{i}\n")).collect();
        let new: String = (1..=20)
            .map(|i| match i {
                2 => "two\n".to_owned(),
                18 => "18\neighteen and a half\n".to_owned(),
                _ => format!("{i}\n"),
            })
            .collect();
        let d = unified(&old, &new, "a", "b");
        assert_eq!(d.matches("@@ ").count(), 2, "{d}");
        assert!(d.contains("@@ -1,5 +1,5 @@\n 1\n-2\n+two\n 3\n"), "{d}");
        assert!(
            d.contains("@@ -16,5 +16,6 @@\n 16\n 17\n 18\n+eighteen and a half\n 19\n 20\n"),
            "{d}"
        );
    }

    #[test]
    fn from_and_to_empty_and_missing_newline() {
        assert_eq!(
            unified("", "x\n", "a", "b"),
            "--- a\n+++ b\n@@ -0,0 +1,1 @@\n+x\n"
        );
        assert_eq!(
            unified("x\n", "", "a", "b"),
            "--- a\n+++ b\n@@ -1,1 +0,0 @@\n-x\n"
        );
        assert_eq!(
            unified("x\n", "x", "a", "b"),
            "--- a\n+++ b\n@@ -1,1 +1,1 @@\n-x\n+x\n\\ No newline at end of file\n"
        );
    }
}

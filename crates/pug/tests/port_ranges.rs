//! The instance port ranges of the end-to-end tests are disjoint. nextest runs every test in a
//! process of its own, in parallel: two pugs given overlapping ranges hand out the same ports,
//! and (`support::tenant_uid_base`) the same tenant uids, and fail each other at random.

use std::path::{Path, PathBuf};

/// Every `(NNNNN, NNNNN)` in a file: the ranges given to `Pug::start` and friends.
fn ranges_in(text: &str) -> Vec<(u32, u32)> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let digits = |at: usize| {
        b.get(at..at + 5)
            .filter(|d| d.iter().all(u8::is_ascii_digit))
    };
    for i in 0..b.len() {
        if b[i] != b'(' {
            continue;
        }
        let (Some(a), Some(z)) = (digits(i + 1), digits(i + 8)) else {
            continue;
        };
        if &b[i + 6..i + 8] != b", " || b.get(i + 13) != Some(&b')') {
            continue;
        }
        let n = |d: &[u8]| std::str::from_utf8(d).unwrap().parse::<u32>().unwrap();
        out.push((n(a), n(z)));
    }
    out
}

fn test_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            if !path.ends_with("support") {
                test_files(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") && !path.ends_with("port_ranges.rs") {
            out.push(path);
        }
    }
}

#[test]
fn the_parser_finds_ranges_and_nothing_else() {
    let text = "Pug::start((21000, 21099), &[]);\nconst P: (u16, u16) = (24000, 24009);\n(1, 2) (123456, 1) (21000,21099)";
    assert_eq!(ranges_in(text), vec![(21000, 21099), (24000, 24009)]);
}

#[test]
fn no_two_test_files_share_instance_ports() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let mut files = Vec::new();
    test_files(&dir, &mut files);
    let mut all: Vec<(u32, u32, String)> = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let name = file.strip_prefix(&dir).unwrap().display().to_string();
        let mut ranges = ranges_in(&text);
        // A range named twice in one file is one pug (its uid base computed from it, say).
        ranges.sort();
        ranges.dedup();
        all.extend(ranges.into_iter().map(|(a, z)| (a, z, name.clone())));
    }
    assert!(
        all.len() > 20,
        "found only {} ranges: is the parser still right?",
        all.len()
    );
    all.sort();
    for pair in all.windows(2) {
        let ((_, end, first), (start, _, second)) = (
            (pair[0].0, pair[0].1, &pair[0].2),
            (pair[1].0, pair[1].1, &pair[1].2),
        );
        assert!(
            start > end,
            "instance ports overlap: {first} uses {}..={end}, {second} starts at {start}; give one of them a free range",
            pair[0].0
        );
    }
}

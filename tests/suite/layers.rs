//! The crate's layering rule, checked against its source: the layer table in `src/lib.rs`'s
//! doc names every top-level module, and no module refers to a module on its own row or above
//! (`crate::x` paths, grouped `use crate::{x, y}` included; comments ignored).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// `module → row` from the ```text block under "## Layers" in lib.rs.
fn layer_table(lib: &str) -> BTreeMap<String, usize> {
    let section = lib
        .split("//! ## Layers")
        .nth(1)
        .expect("lib.rs has a '## Layers' section");
    let block = section
        .split("//! ```text")
        .nth(1)
        .expect("the Layers section has a text block")
        .split("//! ```")
        .next()
        .unwrap();
    let mut rows = BTreeMap::new();
    for line in block.lines() {
        let line = line.trim_start_matches("//!").trim();
        let Some((rank, modules)) = line.split_once(char::is_whitespace) else {
            continue;
        };
        let Ok(rank) = rank.parse::<usize>() else {
            continue;
        };
        for m in modules.split('·').map(str::trim).filter(|m| !m.is_empty()) {
            assert!(
                rows.insert(m.to_string(), rank).is_none(),
                "{m} is on two rows"
            );
        }
    }
    rows
}

/// `pub mod x;` / `mod x;` declarations of lib.rs.
fn declared_modules(lib: &str) -> Vec<String> {
    lib.lines()
        .filter_map(|l| {
            let l = l.trim();
            let l = l.strip_prefix("pub ").unwrap_or(l);
            l.strip_prefix("mod ")?
                .strip_suffix(';')
                .map(str::to_string)
        })
        .collect()
}

/// Every `.rs` file of top-level module `m`: `src/m.rs` or everything under `src/m/`.
fn files_of(src: &Path, m: &str) -> Vec<PathBuf> {
    let single = src.join(format!("{m}.rs"));
    if single.is_file() {
        return vec![single];
    }
    let mut out = Vec::new();
    let mut stack = vec![src.join(m)];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The top-level modules a piece of Rust refers to through `crate::`.
fn crate_references(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in code.lines() {
        // Comments may name any module (doc links); only code is a dependency.
        let line = line.split("//").next().unwrap();
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            if let Some(group) = after.strip_prefix('{') {
                // `crate::{a, b::c, d::{e, f}}`: the top-level names at depth 0.
                let (mut depth, mut name) = (0, String::new());
                for ch in group.chars() {
                    match ch {
                        '{' => depth += 1,
                        '}' if depth == 0 => break,
                        '}' => depth -= 1,
                        ',' if depth == 0 => {
                            out.extend(first_ident(&name));
                            name.clear();
                        }
                        c if depth == 0 => name.push(c),
                        _ => {}
                    }
                }
                out.extend(first_ident(&name));
            } else {
                out.extend(first_ident(after));
            }
            rest = after;
        }
    }
    out
}

fn first_ident(s: &str) -> Option<String> {
    let s = s.trim_start();
    let ident: String = s
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    (!ident.is_empty()).then_some(ident)
}

#[test]
fn no_module_imports_one_on_its_row_or_above() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    let rows = layer_table(&lib);
    let declared = declared_modules(&lib);
    assert!(declared.len() > 10, "found modules: {declared:?}");
    for m in &declared {
        assert!(
            rows.contains_key(m),
            "module {m} is not in lib.rs's layer table"
        );
    }
    for m in rows.keys() {
        assert!(
            declared.contains(m),
            "the layer table names {m}, lib.rs declares no such module"
        );
    }
    let mut violations = Vec::new();
    let mut references = 0;
    for (m, &rank) in &rows {
        for file in files_of(&src, m) {
            let code = std::fs::read_to_string(&file).unwrap();
            for target in crate_references(&code) {
                references += 1;
                if &target == m {
                    continue;
                }
                let Some(&target_rank) = rows.get(&target) else {
                    violations.push(format!(
                        "{}: crate::{target} is not a module",
                        file.display()
                    ));
                    continue;
                };
                if target_rank >= rank {
                    violations.push(format!(
                        "{}: {m} (row {rank}) imports {target} (row {target_rank})",
                        file.display()
                    ));
                }
            }
        }
    }
    assert!(
        violations.is_empty(),
        "upward imports:\n{}",
        violations.join("\n")
    );
    // The scan found the crate's real dependencies (an empty scan would pass vacuously).
    assert!(
        references > 50,
        "only {references} crate:: references found"
    );
}

#[test]
fn the_scanner_sees_grouped_and_nested_imports_and_skips_comments() {
    let code = "use crate::{augment::Augmenter, config::{Tta, Schedule}, seed};\n\
                let x = crate::train::Trainer::new(); // crate::render is a comment\n\
                /// [`crate::stream`] in a doc comment\n";
    assert_eq!(
        crate_references(code),
        ["augment", "config", "seed", "train"]
    );
    let table = layer_table("//! ## Layers\n//! ```text\n//!  2  b · c\n//!  1  a\n//! ```\n");
    assert_eq!(table["b"], 2);
    assert_eq!(table["c"], 2);
    assert_eq!(table["a"], 1);
}

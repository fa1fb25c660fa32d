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
    references_through(code, "crate::")
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

/// The names a piece of Rust reaches through `prefix` (`super::`, `crate::train::`, …): the
/// first identifier after it, each name of a `prefix{a, b::c}` group included; comments ignored.
fn references_through(code: &str, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in code.lines() {
        let line = line.split("//").next().unwrap();
        let mut rest = line;
        while let Some(at) = rest.find(prefix) {
            // `super::super::x` is the grandparent's `x`, not the parent's `super`.
            let before = &rest[..at];
            let after = &rest[at + prefix.len()..];
            rest = after;
            if before.ends_with("::") || before.ends_with(|c: char| c.is_alphanumeric() || c == '_')
            {
                continue;
            }
            if let Some(group) = after.strip_prefix('{') {
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
        }
    }
    out
}

/// A folder of `src/` as a graph: its files and subfolders are nodes (`mod` for its `mod.rs`),
/// and an edge `a → b` says code in `a` uses `b` (through `super::`, the folder's `crate::` path,
/// or a name `mod.rs` re-exports from `b`). Declarations and re-exports in `mod.rs` are no edges.
fn folder_graph(src: &Path, folder: &Path) -> BTreeMap<String, Vec<String>> {
    let rel = folder.strip_prefix(src).unwrap();
    // A binary's folder (`src/bin/x/`) is its own crate, rooted at `main.rs`.
    let binary = rel.parent() == Some(Path::new("bin"));
    let root = if binary { "main" } else { "mod" };
    let crate_path = if binary {
        "crate::".to_string()
    } else {
        format!(
            "crate::{}::",
            rel.components()
                .map(|c| c.as_os_str().to_str().unwrap())
                .collect::<Vec<_>>()
                .join("::")
        )
    };
    let mut children = Vec::new();
    for entry in std::fs::read_dir(folder).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_str().unwrap().to_string();
        if path.is_dir() || (path.extension().is_some_and(|e| e == "rs") && name != root) {
            children.push((name, path));
        }
    }
    // The folder's root: its `mod.rs` (`main.rs` for a binary), or the file `x.rs` beside the
    // folder `x/`.
    let beside = folder.with_extension("rs");
    let root_file = if !binary && !folder.join("mod.rs").exists() && beside.is_file() {
        beside
    } else {
        folder.join(format!("{root}.rs"))
    };
    let mod_rs = std::fs::read_to_string(root_file).unwrap_or_default();
    // `pub use child::{A, b::C as D};` → A and D come from child.
    let mut reexported: BTreeMap<String, String> = BTreeMap::new();
    let mut own_code = String::new();
    let mut in_reexport: Option<String> = None;
    for line in mod_rs.lines() {
        let t = line.trim();
        if let Some(child) = in_reexport.clone() {
            for name in t.split([',', '{', '}', ';']) {
                if let Some(n) = name
                    .split(" as ")
                    .last()
                    .and_then(|n| n.rsplit("::").next())
                {
                    if !n.trim().is_empty() {
                        reexported.insert(n.trim().to_string(), child.clone());
                    }
                }
            }
            if t.contains(';') {
                in_reexport = None;
            }
            continue;
        }
        if let Some(rest) = t.strip_prefix("pub use ") {
            let child = first_ident(rest).unwrap_or_default();
            let names = rest.split_once("::").map_or("", |(_, n)| n);
            for name in names.split([',', '{', '}', ';']) {
                if let Some(n) = name
                    .split(" as ")
                    .last()
                    .and_then(|n| n.rsplit("::").next())
                {
                    if !n.trim().is_empty() {
                        reexported.insert(n.trim().to_string(), child.clone());
                    }
                }
            }
            if !t.contains(';') {
                in_reexport = Some(child);
            }
            continue;
        }
        let declaration = t.trim_start_matches("pub ").starts_with("mod ")
            || t.starts_with("#[cfg")
            || t.starts_with("//");
        if !declaration {
            own_code.push_str(line);
            own_code.push('\n');
        }
    }
    let is_child = |n: &str| children.iter().any(|(c, _)| c == n);
    let resolve = |n: &str| -> Option<String> {
        if is_child(n) {
            Some(n.to_string())
        } else if let Some(child) = reexported.get(n) {
            is_child(child).then(|| child.clone())
        } else {
            // An item mod.rs defines itself.
            let defined = [
                "fn",
                "struct",
                "enum",
                "trait",
                "const",
                "static",
                "type",
                "macro_rules!",
            ]
            .iter()
            .any(|kw| {
                own_code.contains(&format!("{kw} {n}"))
                    && own_code[own_code.find(&format!("{kw} {n}")).unwrap() + kw.len() + 1..]
                        .starts_with(|c: char| c.is_alphanumeric() || c == '_')
            });
            defined.then(|| "mod".to_string())
        }
    };
    let mut graph: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, path) in &children {
        let mut refs = Vec::new();
        let files = if path.is_dir() {
            let mut files = Vec::new();
            let mut stack = vec![path.clone()];
            while let Some(dir) = stack.pop() {
                for entry in std::fs::read_dir(&dir).unwrap() {
                    let p = entry.unwrap().path();
                    if p.is_dir() {
                        stack.push(p);
                    } else if p.extension().is_some_and(|e| e == "rs") {
                        files.push(p);
                    }
                }
            }
            files
        } else {
            vec![path.clone()]
        };
        for file in files {
            let code = std::fs::read_to_string(&file).unwrap();
            // A test module's `super::` is its own file.
            let code = code.split("#[cfg(test)]\nmod tests").next().unwrap();
            // How many `super::` reach this folder from the file.
            let depth = file
                .parent()
                .unwrap()
                .strip_prefix(folder)
                .unwrap()
                .components()
                .count();
            let is_mod = file.file_name().unwrap() == "mod.rs";
            let ups = depth + usize::from(!is_mod);
            let prefix = "super::".repeat(ups.max(1));
            refs.extend(references_through(code, &prefix));
            refs.extend(references_through(code, &crate_path));
        }
        let targets: Vec<String> = refs
            .iter()
            .filter_map(|n| resolve(n))
            .filter(|t| t != name)
            .collect();
        // A file and a folder of one name (`x.rs` and `x/`) are one module: one node.
        let entry = graph.entry(name.clone()).or_default();
        entry.extend(targets);
        entry.sort();
        entry.dedup();
    }
    let mut from_mod: Vec<String> = children
        .iter()
        .filter(|(c, _)| {
            own_code.contains(&format!("{c}::")) && {
                // `child::` at the start of a path, not `x::child::`.
                own_code.match_indices(&format!("{c}::")).any(|(i, _)| {
                    let before = &own_code[..i];
                    !before.ends_with("::")
                        && !before.ends_with(|ch: char| ch.is_alphanumeric() || ch == '_')
                })
            }
        })
        .map(|(c, _)| c.clone())
        .collect();
    from_mod.sort();
    graph.insert("mod".to_string(), from_mod);
    graph
}

/// A cycle of `graph`, if it has one (as the names along it).
fn find_cycle(graph: &BTreeMap<String, Vec<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        graph: &BTreeMap<String, Vec<String>>,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_string(), 1);
        path.push(n.to_string());
        for m in graph.get(n).into_iter().flatten() {
            match state.get(m.as_str()).copied().unwrap_or(0) {
                1 => {
                    let at = path.iter().position(|p| p == m).unwrap();
                    let mut cycle = path[at..].to_vec();
                    cycle.push(m.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(m, graph, state, path) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        path.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in graph.keys() {
        if state.get(n.as_str()).copied().unwrap_or(0) == 0 {
            if let Some(c) = visit(n, graph, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

/// The groups of nodes that reach each other (every loop lies inside one), for the report.
fn tangles(graph: &BTreeMap<String, Vec<String>>) -> Vec<Vec<String>> {
    let reach = |from: &str| {
        let mut seen = std::collections::BTreeSet::new();
        let mut stack = vec![from.to_string()];
        while let Some(n) = stack.pop() {
            for m in graph.get(&n).into_iter().flatten() {
                if seen.insert(m.clone()) {
                    stack.push(m.clone());
                }
            }
        }
        seen
    };
    let mut out: Vec<Vec<String>> = Vec::new();
    for a in graph.keys() {
        let from_a = reach(a);
        if !from_a.contains(a) || out.iter().any(|g| g.contains(a)) {
            continue;
        }
        let group = graph
            .keys()
            .filter(|b| from_a.contains(*b) && reach(b).contains(a))
            .cloned()
            .collect();
        out.push(group);
    }
    out
}

#[test]
fn no_folder_of_src_has_an_import_loop_between_its_files() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut folders = vec![];
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p.clone());
                folders.push(p);
            }
        }
    }
    folders.sort();
    let mut loops = Vec::new();
    let mut edges = 0;
    for folder in &folders {
        let graph = folder_graph(&src, folder);
        edges += graph.values().map(Vec::len).sum::<usize>();
        if let Some(cycle) = find_cycle(&graph) {
            let rel = folder.strip_prefix(&src).unwrap().display().to_string();
            let groups: Vec<String> = tangles(&graph).iter().map(|g| g.join(" ")).collect();
            loops.push(format!(
                "src/{rel}: {} (files that reach each other: {})",
                cycle.join(" -> "),
                groups.join(" | ")
            ));
        }
    }
    assert!(loops.is_empty(), "import loops:\n{}", loops.join("\n"));
    // The scan saw the folders' real dependencies.
    assert!(
        folders.len() > 10 && edges > 40,
        "{} folders, {edges} edges",
        folders.len()
    );
}

#[test]
fn the_folder_scan_resolves_reexports_and_finds_a_loop() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m");
    std::fs::create_dir(&m).unwrap();
    let write = |name: &str, code: &str| std::fs::write(m.join(name), code).unwrap();
    write(
        "mod.rs",
        "mod a;\nmod b;\npub use a::{Alpha, Beta as B2};\npub fn helper() {}\n",
    );
    write(
        "a.rs",
        "use super::b::Thing;\npub struct Alpha;\npub struct Beta;\n",
    );
    write("b.rs", "use super::{Alpha, helper};\npub struct Thing;\n");
    let graph = folder_graph(dir.path(), &m);
    assert_eq!(graph["a"], ["b"]);
    assert_eq!(graph["b"], ["a", "mod"]);
    assert_eq!(find_cycle(&graph).unwrap(), ["a", "b", "a"]);
    write("b.rs", "use super::helper;\n");
    let graph = folder_graph(dir.path(), &m);
    assert_eq!(find_cycle(&graph), None);
    // A folder `a/` under the file `a.rs`: `a.rs` is its root.
    std::fs::create_dir(m.join("a")).unwrap();
    write("a/c.rs", "use super::Alpha;\npub fn f() {}\n");
    let graph = folder_graph(dir.path(), &m.join("a"));
    assert_eq!(graph["c"], ["mod"]);
    assert_eq!(find_cycle(&graph), None);
    write("a.rs", "mod c;\npub struct Alpha;\nfn g() { c::f() }\n");
    let graph = folder_graph(dir.path(), &m.join("a"));
    assert_eq!(find_cycle(&graph).unwrap(), ["c", "mod", "c"]);
}

#[test]
fn no_struct_field_is_shared_with_the_parent_module() {
    // A `pub(super)` field lets sibling files reach into a struct: state that should be passed
    // through the struct's methods.
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut found = Vec::new();
    let mut stack = vec![src];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "rs") {
                let code = std::fs::read_to_string(&p).unwrap();
                for (i, line) in code.lines().enumerate() {
                    let t = line.trim_start();
                    let field = t.strip_prefix("pub(super) ").is_some_and(|rest| {
                        first_ident(rest).is_some_and(|id| rest[id.len()..].starts_with(':'))
                    });
                    if field {
                        found.push(format!("{}:{}: {t}", p.display(), i + 1));
                    }
                }
            }
        }
    }
    assert!(found.is_empty(), "pub(super) fields:\n{}", found.join("\n"));
}

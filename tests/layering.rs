//! The crate's modules form layers: no import cycle between the files of src/, nor between
//! its top-level modules (ARCHITECTURE.md draws the layers). Reads the sources as text:
//! every `crate::a::b` path (also inside `use crate::{…}` groups) and `super::` path names
//! the deepest module file it reaches; comments are skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Module = Vec<String>;

/// Every module file under `src/`, by its module path (`lib.rs`/`main.rs` are the root).
fn modules(dir: &Path, prefix: &[String], out: &mut BTreeMap<Module, String>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
    entries.sort_by_key(|e| e.path());
    for e in entries {
        let p = e.path();
        let name = p.file_stem().unwrap().to_string_lossy().to_string();
        if p.is_dir() {
            let mut next = prefix.to_vec();
            next.push(name);
            modules(&p, &next, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            let mut m = prefix.to_vec();
            if !matches!(name.as_str(), "mod" | "lib" | "main") {
                m.push(name);
            }
            let text = std::fs::read_to_string(&p).unwrap();
            out.entry(m).or_default().push_str(&text);
        }
    }
}

/// The source without `//` comments (doc comments name modules they do not import).
fn code(text: &str) -> String {
    text.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The paths after each occurrence of `anchor` (`crate::` or `super::`), with `{a, b::c}`
/// groups expanded one level.
fn paths_after(text: &str, anchor: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for (i, _) in text.match_indices(anchor) {
        if text[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let rest = &text[i + anchor.len()..];
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(rest.len());
        let base: Vec<String> = rest[..end]
            .split("::")
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        if rest[end..].starts_with('{') {
            let close = rest[end..].find('}').map_or(rest.len(), |c| end + c);
            for item in rest[end + 1..close].split(',') {
                let mut p = base.clone();
                p.extend(
                    item.split("::")
                        .map(|s| s.trim().to_string())
                        .filter(|s| !s.is_empty() && s != "self"),
                );
                out.push(p);
            }
        } else {
            out.push(base);
        }
    }
    out
}

/// The module graph: an edge from each file to each module file its paths reach (not to
/// its own ancestors, which contain it).
fn graph() -> BTreeMap<Module, BTreeSet<Module>> {
    let mut files = BTreeMap::new();
    modules(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &[],
        &mut files,
    );
    let known: BTreeSet<Module> = files.keys().cloned().collect();
    let resolve = |path: &[String]| {
        (1..=path.len())
            .rev()
            .map(|n| path[..n].to_vec())
            .find(|m| known.contains(m))
    };
    let mut edges = BTreeMap::new();
    for (m, text) in &files {
        let text = code(text);
        let mut targets = BTreeSet::new();
        let mut add = |path: Vec<String>| {
            if let Some(t) = resolve(&path) {
                if !m.starts_with(&t) {
                    targets.insert(t);
                }
            }
        };
        for p in paths_after(&text, "crate::") {
            add(p);
        }
        for p in paths_after(&text, "super::") {
            let mut full = m[..m.len().saturating_sub(1)].to_vec();
            full.extend(p);
            add(full);
        }
        edges.insert(m.clone(), targets);
    }
    edges
}

/// The strongly connected components of more than one node (Tarjan).
fn cycles(edges: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<Vec<Module>> {
    struct State<'a> {
        edges: &'a BTreeMap<Module, BTreeSet<Module>>,
        index: BTreeMap<Module, usize>,
        low: BTreeMap<Module, usize>,
        stack: Vec<Module>,
        found: Vec<Vec<Module>>,
    }
    fn visit(s: &mut State, v: &Module) {
        let i = s.index.len();
        s.index.insert(v.clone(), i);
        s.low.insert(v.clone(), i);
        s.stack.push(v.clone());
        for w in s.edges.get(v).into_iter().flatten() {
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if s.stack.contains(w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = s.stack.pop() {
                let done = &w == v;
                comp.push(w);
                if done {
                    break;
                }
            }
            if comp.len() > 1 {
                s.found.push(comp);
            }
        }
    }
    let mut s = State {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        found: Vec::new(),
    };
    for v in edges.keys() {
        if !s.index.contains_key(v) {
            visit(&mut s, v);
        }
    }
    s.found
}

fn show(c: &[Module]) -> String {
    c.iter().map(|m| m.join("/")).collect::<Vec<_>>().join(", ")
}

#[test]
fn no_import_cycle_between_files() {
    let g = graph();
    assert!(g.len() > 50, "read only {} module files", g.len());
    let found = cycles(&g);
    assert!(
        found.is_empty(),
        "import cycles: {:?}",
        found.iter().map(|c| show(c)).collect::<Vec<_>>()
    );
}

#[test]
fn no_import_cycle_between_top_level_modules() {
    let mut top: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for (a, targets) in graph() {
        let ta = a.first().cloned().into_iter().collect::<Module>();
        let entry = top.entry(ta.clone()).or_default();
        for b in targets {
            let tb: Module = b.first().cloned().into_iter().collect();
            if tb != ta && !tb.is_empty() {
                entry.insert(tb);
            }
        }
    }
    let found = cycles(&top);
    assert!(
        found.is_empty(),
        "module cycles: {:?}",
        found.iter().map(|c| show(c)).collect::<Vec<_>>()
    );
}

#[test]
fn the_checker_sees_a_cycle() {
    let m = |s: &str| vec![s.to_string()];
    let mut g = BTreeMap::new();
    g.insert(m("a"), BTreeSet::from([m("b")]));
    g.insert(m("b"), BTreeSet::from([m("c")]));
    g.insert(m("c"), BTreeSet::from([m("a")]));
    g.insert(m("d"), BTreeSet::from([m("a")]));
    assert_eq!(cycles(&g).len(), 1);
    let paths = paths_after("use crate::x::{y, z::w};", "crate::");
    assert_eq!(paths, vec![vec!["x", "y"], vec!["x", "z", "w"]]);
}

#[test]
fn the_cpu_kernels_are_the_bottom_layer() {
    // src/cpu sits under the reference and everything else: it imports no other module.
    let g = graph();
    assert!(g.keys().any(|m| m.first().is_some_and(|s| s == "cpu")));
    for (m, targets) in g {
        if m.first().is_some_and(|s| s == "cpu") {
            for t in targets {
                assert!(
                    t.first().is_some_and(|s| s == "cpu"),
                    "{} imports {}",
                    m.join("/"),
                    t.join("/")
                );
            }
        }
    }
}

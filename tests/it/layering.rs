//! The crate's modules import each other without circles: every file of
//! `src/` is a module, and a `crate::…` or `super::…` path in it is an edge
//! to the module the path names. A module's references to its own ancestors
//! or descendants are not edges (a parent declares its children, children
//! use what the parent re-exports). A path through a re-export ends at the
//! module that re-exports (`crate::node::Cluster` is an edge to `node`).
//! Test modules are left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Module = Vec<String>;

fn modules(dir: &Path, prefix: &[String], out: &mut BTreeMap<Module, String>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("read src")
        .map(|e| e.expect("entry").path())
        .collect();
    entries.sort();
    for path in entries {
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("utf-8 name")
            .to_owned();
        if path.is_dir() {
            let mut p = prefix.to_vec();
            p.push(name);
            modules(&path, &p, out);
        } else if path.extension().is_some_and(|e| e == "rs") && name != "main" {
            let mut p = prefix.to_vec();
            if name != "lib" {
                p.push(name);
            }
            let text = std::fs::read_to_string(&path).expect("read");
            // Code after the unit-test module is test code.
            let code = text
                .split("#[cfg(test)]\nmod tests {")
                .next()
                .unwrap_or_default();
            out.insert(p, code.to_owned());
        }
    }
}

/// The path segments that follow `at` (`a::b::{c, d::e}` gives `[a, b]`
/// and the group's first segments `[c, d]`).
fn path_after(code: &str, at: usize) -> (Vec<String>, Vec<String>) {
    let mut segs = Vec::new();
    let mut rest = &code[at..];
    while let Some(r) = rest.strip_prefix("::") {
        if let Some(group) = r.strip_prefix('{') {
            let inner = group.split('}').next().unwrap_or_default();
            let items = inner
                .split(',')
                .filter_map(|i| i.trim().split("::").next())
                .map(|i| i.split_whitespace().next().unwrap_or_default().to_owned())
                .filter(|i| !i.is_empty() && i != "self")
                .collect();
            return (segs, items);
        }
        let len = r
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(r.len());
        if len == 0 {
            break;
        }
        segs.push(r[..len].to_owned());
        rest = &r[len..];
    }
    (segs, Vec::new())
}

fn edges(mods: &BTreeMap<Module, String>) -> BTreeMap<Module, BTreeSet<Module>> {
    let resolve = |segs: &[String]| -> Option<Module> {
        (0..=segs.len())
            .rev()
            .map(|n| segs[..n].to_vec())
            .find(|m| mods.contains_key(m))
    };
    let mut out = BTreeMap::new();
    for (m, code) in mods {
        let mut to = BTreeSet::new();
        let code: String = code
            .lines()
            .map(|l| l.split("//").next().unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n");
        for keyword in ["crate", "super"] {
            for (at, _) in code.match_indices(keyword) {
                let before = code[..at].chars().next_back();
                if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                    continue;
                }
                let (mut segs, group) = path_after(&code, at + keyword.len());
                if keyword == "super" {
                    let mut base = m[..m.len().saturating_sub(1)].to_vec();
                    while segs.first().is_some_and(|s| s == "super") {
                        segs.remove(0);
                        base.pop();
                    }
                    base.extend(segs);
                    segs = base;
                }
                let mut targets = vec![segs.clone()];
                targets.extend(group.into_iter().map(|g| {
                    let mut t = segs.clone();
                    t.push(g);
                    t
                }));
                for t in targets {
                    let Some(r) = resolve(&t) else { continue };
                    let related = r.starts_with(m) || m.starts_with(&r);
                    if !related {
                        to.insert(r);
                    }
                }
            }
        }
        out.insert(m.clone(), to);
    }
    out
}

/// A cycle through `start`, if there is one.
fn cycle_from(start: &Module, graph: &BTreeMap<Module, BTreeSet<Module>>) -> Option<Vec<Module>> {
    let mut stack = vec![(start.clone(), vec![start.clone()])];
    let mut seen = BTreeSet::new();
    while let Some((m, path)) = stack.pop() {
        for next in graph.get(&m).into_iter().flatten() {
            if next == start {
                return Some(path);
            }
            if seen.insert(next.clone()) {
                let mut p = path.clone();
                p.push(next.clone());
                stack.push((next.clone(), p));
            }
        }
    }
    None
}

#[test]
fn modules_import_each_other_without_circles() {
    let mut mods = BTreeMap::new();
    modules(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &[],
        &mut mods,
    );
    let graph = edges(&mods);
    for m in mods.keys() {
        if let Some(path) = cycle_from(m, &graph) {
            let names: Vec<String> = path.iter().map(|m| m.join("::")).collect();
            panic!("import circle: {} -> back", names.join(" -> "));
        }
    }
    // The checker saw real edges (it would pass vacuously otherwise).
    let http: Module = vec!["http".into()];
    assert!(
        graph[&http].contains(&vec!["node".to_owned()]),
        "{:?}",
        graph[&http]
    );
}

#[test]
fn the_checker_finds_a_circle() {
    let mods: BTreeMap<Module, String> = [
        (vec!["a".into()], "use crate::b::{Thing, other};".to_owned()),
        (vec!["b".into()], "fn f() { crate::a::g() }".to_owned()),
        (
            vec!["b".into(), "c".into()],
            "use super::super::a;".to_owned(),
        ),
    ]
    .into();
    let graph = edges(&mods);
    assert!(cycle_from(&vec!["a".into()], &graph).is_some());
    // A child using its parent is not an edge.
    assert!(graph[&vec!["b".to_owned(), "c".to_owned()]].contains(&vec!["a".to_owned()]));
    assert!(!graph[&vec!["b".to_owned(), "c".to_owned()]].contains(&vec!["b".to_owned()]));
}

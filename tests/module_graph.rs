//! No import circles between modules (issue 8): the graph of `crate::` references
//! between the modules of the CLI (`src/`, with `src/restore/` as one module) and of
//! the tracer (`tracer/src/`, with `tracer/src/fd/` as one module) has no cycle. Test
//! modules (`#[cfg(test)]` and below) are left out.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

/// The `crate::NAME` references of a source file, before its test module.
fn references(path: &Path) -> BTreeSet<String> {
    let text = fs::read_to_string(path).unwrap();
    let code = text.split("#[cfg(test)]").next().unwrap_or("");
    let mut out = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        let name: String = code[i + 7..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            out.insert(name);
        }
    }
    out
}

/// The `crate::NAME` references of every source file under `dir`, at any depth.
fn references_under(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for f in fs::read_dir(dir).unwrap() {
        let f = f.unwrap().path();
        if f.is_dir() {
            out.extend(references_under(&f));
        } else if f.extension().is_some_and(|x| x == "rs") {
            out.extend(references(&f));
        }
    }
    out
}

/// Module name -> the modules it refers to, for the crate rooted at `dir` (the root
/// file `root` itself is not a module here). A subdirectory is one module, with every
/// file below it (`tracer/src/fd/unix/` is part of `fd`).
fn graph(dir: &Path, root: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_stem().unwrap().to_string_lossy().to_string();
        if p.is_dir() {
            g.entry(name).or_default().extend(references_under(&p));
        } else if p.extension().is_some_and(|x| x == "rs") && name != root {
            let refs = references(&p);
            g.entry(name).or_default().extend(refs);
        }
    }
    let names: BTreeSet<String> = g.keys().cloned().collect();
    for (name, refs) in g.iter_mut() {
        refs.retain(|r| names.contains(r) && r != name);
    }
    g
}

/// A cycle of the graph, if there is one.
fn find_cycle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = stack.iter().position(|s| s == n) {
            let mut c = stack[i..].to_vec();
            c.push(n.to_string());
            return Some(c);
        }
        if done.contains(n) {
            return None;
        }
        stack.push(n.to_string());
        for m in &g[n] {
            if let Some(c) = visit(m, g, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for n in g.keys() {
        if let Some(c) = visit(n, g, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}

#[test]
fn no_import_circles() {
    let top = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (dir, root) in [("src", "main"), ("tracer/src", "lib")] {
        let g = graph(&top.join(dir), root);
        assert!(g.len() > 5, "{dir}: only {} modules found", g.len());
        if let Some(c) = find_cycle(&g) {
            panic!("{dir}: import circle {}", c.join(" -> "));
        }
    }
    // The check itself finds a circle where there is one.
    let mut g = BTreeMap::new();
    g.insert("a".to_string(), BTreeSet::from(["b".to_string()]));
    g.insert("b".to_string(), BTreeSet::from(["a".to_string()]));
    assert!(find_cycle(&g).is_some());
}

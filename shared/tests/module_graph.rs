//! The modules of `shared/` import each other one way only.
//!
//! Reads every source file, takes each `crate::` path it names (in `use`
//! lines and inline, braces expanded), maps it to the top-level module it
//! lands in, and fails on any cycle among them. A child such as
//! `store/users.rs` belongs to `store`. The crate root counts as a module of
//! its own (`lib`) that depends on every module it declares and every one its
//! own code names: so a module that imports `crate::Deps` rather than
//! `crate::deps::Deps` closes a cycle through `lib.rs`.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::Path,
};

type Graph = BTreeMap<String, BTreeSet<String>>;

const ROOT: &str = "lib";

#[test]
fn the_shared_modules_import_each_other_without_a_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let files = sources(&src);
    let modules: BTreeSet<String> = files.iter().map(|(module, _)| module.clone()).collect();
    assert!(
        modules.contains("store") && modules.contains("http") && modules.len() > 8,
        "read the wrong folder: {modules:?}"
    );
    let graph = graph(&files, &modules);
    if let Some(cycle) = find_cycle(&graph) {
        panic!(
            "import cycle among shared/ modules: {}\nedges: {graph:#?}",
            cycle.join(" -> ")
        );
    }
}

#[test]
fn the_check_finds_a_cycle_through_the_crate_root() {
    let files = vec![
        (
            ROOT.to_owned(),
            "mod http;\npub mod deps;\npub use crate::deps::Deps;".to_owned(),
        ),
        (
            "deps".to_owned(),
            "use crate::{config::Config, store::Store};".to_owned(),
        ),
        (
            "http".to_owned(),
            "use crate::{\n    Deps,\n    config::HttpLimits,\n};".to_owned(),
        ),
        ("config".to_owned(), String::new()),
        (
            "store".to_owned(),
            "fn f() { crate::config::load(); }".to_owned(),
        ),
    ];
    let modules = files.iter().map(|(module, _)| module.clone()).collect();
    let graph = graph(&files, &modules);
    assert_eq!(
        graph["http"],
        BTreeSet::from([ROOT.into(), "config".into()])
    );
    assert_eq!(graph["store"], BTreeSet::from(["config".into()]));
    let cycle = find_cycle(&graph).expect("http -> lib -> http is a cycle");
    assert_eq!(cycle.first(), cycle.last());
    assert!(cycle.contains(&"http".to_owned()) && cycle.contains(&ROOT.to_owned()));

    let acyclic: Graph = [
        ("http", vec!["deps", "config"]),
        ("deps", vec!["config"]),
        ("config", vec![]),
    ]
    .into_iter()
    .map(|(from, to)| (from.into(), to.into_iter().map(String::from).collect()))
    .collect();
    assert_eq!(find_cycle(&acyclic), None);
}

/// Each `.rs` file under `src` with the top-level module it belongs to.
fn sources(src: &Path) -> Vec<(String, String)> {
    let mut files = Vec::new();
    let mut pending = vec![src.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).expect("read shared/src") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                pending.push(path);
                continue;
            }
            if path.extension().is_none_or(|ext| ext != "rs") {
                continue;
            }
            let relative = path.strip_prefix(src).expect("under src");
            let first = relative.components().next().expect("a file name");
            let name = first.as_os_str().to_string_lossy();
            let module = name.strip_suffix(".rs").unwrap_or(&name).to_owned();
            files.push((
                module,
                fs::read_to_string(&path).expect("read a source file"),
            ));
        }
    }
    files
}

/// Module -> the other modules (or `lib`) it names through `crate::`.
fn graph(files: &[(String, String)], modules: &BTreeSet<String>) -> Graph {
    let mut graph = Graph::new();
    for (module, text) in files {
        let targets = graph.entry(module.clone()).or_default();
        let mut named = crate_paths(text);
        if module == ROOT {
            named.extend(root_paths(text, modules));
        }
        for first in named {
            let target = if modules.contains(&first) && first != ROOT {
                first
            } else {
                ROOT.to_owned()
            };
            if &target != module {
                targets.insert(target);
            }
        }
    }
    graph
}

/// The first segment after each `crate::` in `text`, with `crate::{a::x, b}`
/// giving `a` and `b`. Comments are skipped, so a doc link is no import.
fn crate_paths(text: &str) -> Vec<String> {
    let code = without_comments(text);
    let mut firsts = Vec::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().next_back();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // `finapp_crate::`, not ours
        }
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    _ => {}
                }
                if depth == 0 || (depth == 1 && c == ',') {
                    firsts.push(first_segment(&item));
                    item.clear();
                    if depth == 0 {
                        break;
                    }
                } else {
                    item.push(c);
                }
            }
        } else {
            firsts.push(first_segment(rest));
        }
    }
    firsts.retain(|first| !first.is_empty() && first != "self");
    firsts
}

/// What the crate root names without `crate::`: the modules it declares
/// (`pub mod http;`) and those its code calls into (`http::serve(...)`).
fn root_paths(text: &str, modules: &BTreeSet<String>) -> Vec<String> {
    let code = without_comments(text);
    let mut named = Vec::new();
    for line in code.lines() {
        let line = line.trim();
        if let Some(declared) = line
            .strip_prefix("pub mod ")
            .or_else(|| line.strip_prefix("mod "))
            .and_then(|rest| rest.strip_suffix(';'))
        {
            named.push(declared.trim().to_owned());
        }
    }
    for module in modules {
        let call = format!("{module}::");
        let mut rest = code.as_str();
        while let Some(at) = rest.find(&call) {
            let before = rest[..at].chars().next_back();
            rest = &rest[at + call.len()..];
            if !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                named.push(module.clone());
            }
        }
    }
    named
}

fn without_comments(text: &str) -> String {
    text.lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn first_segment(path: &str) -> String {
    path.trim()
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

/// A path that returns to where it started, if the graph has one.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &Graph,
        done: &mut BTreeSet<String>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|seen| seen == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, done, path) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut done, &mut Vec::new()))
}

//! kiln-train's module graph, read from its `crate::` paths: no circles between its top-level modules, and every
//! import points down the layers ARCHITECTURE.md lists (foundation, data, config, run plumbing, engine, task
//! folders, registry). A task folder imports no other task; the config and the engine import no task. No two
//! files import each other, directly or around a circle. Also: the tuner crate builds without libtorch.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layer of each top-level module of kiln-train, lowest first.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "foundation",
        &[
            "error",
            "fsutil",
            "native",
            "distributed",
            "allocator",
            "device",
            "precision",
            "progress",
            "metrics",
            "plots",
            "synthetic",
        ],
    ),
    ("data", &["data"]),
    ("config", &["config"]),
    ("run plumbing", &["checkpoint", "run_dir", "run_lock", "optim", "step_timer", "export"]),
    ("engine", &["engine"]),
    ("task folders", &["classify", "detect", "ocr"]),
    ("registry", &["tasks", "study", "tune", "lib"]),
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|(_, modules)| modules.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The source without comments and without its unit tests (tests may reach anywhere).
fn code(source: &str) -> String {
    let source = source.split("#[cfg(test)]").next().unwrap_or_default();
    source.lines().map(|line| line.split("//").next().unwrap_or_default()).collect::<Vec<_>>().join("\n")
}

/// The top-level modules a source file names through `crate::`, including `use crate::{a, b::C}` groups.
fn imported_modules(code: &str) -> BTreeSet<String> {
    let ident = |s: &str| s.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect::<String>();
    let mut found = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find(';').unwrap_or(group.len())];
            let mut depth = 0;
            let mut start = true;
            for (k, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => start = true,
                    c if start && !c.is_whitespace() => {
                        start = false;
                        found.insert(ident(&group[k..]));
                    }
                    _ => {}
                }
            }
        } else {
            found.insert(ident(rest));
        }
    }
    found
        .into_iter()
        .map(|m| if m == "Error" || m == "Result" { "error".to_string() } else { m })
        .filter(|m| !m.is_empty() && m.chars().next().is_some_and(|c| c.is_ascii_lowercase()))
        .collect()
}

/// Top-level module -> the top-level modules it imports.
fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("train/src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let relative = file.strip_prefix(&src).unwrap();
        let first = relative.components().next().unwrap().as_os_str().to_string_lossy().into_owned();
        let module = first.trim_end_matches(".rs").to_string();
        let imports = imported_modules(&code(&std::fs::read_to_string(&file).unwrap()));
        graph.entry(module.clone()).or_default().extend(imports.into_iter().filter(|m| *m != module));
    }
    graph
}

/// A circle through `start`, if there is one.
fn circle_through(graph: &BTreeMap<String, BTreeSet<String>>, start: &str) -> Option<Vec<String>> {
    fn walk(
        graph: &BTreeMap<String, BTreeSet<String>>,
        start: &str,
        path: &mut Vec<String>,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        let last = path.last().unwrap().clone();
        for next in graph.get(&last).into_iter().flatten() {
            if next == start {
                path.push(next.clone());
                return true;
            }
            if seen.insert(next.clone()) {
                path.push(next.clone());
                if walk(graph, start, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![start.to_string()];
    walk(graph, start, &mut path, &mut BTreeSet::new()).then_some(path)
}

#[test]
fn the_module_graph_has_no_circles_and_every_import_points_down() {
    let graph = module_graph();
    for module in ["config", "data", "engine", "classify", "detect", "ocr", "tasks"] {
        assert!(graph.contains_key(module), "kiln-train has no module {module}: update LAYERS");
    }
    let mut problems = Vec::new();
    for (module, imports) in &graph {
        let Some(from) = layer_of(module) else {
            problems.push(format!("{module} is in no layer of LAYERS"));
            continue;
        };
        for import in imports {
            let Some(to) = layer_of(import) else {
                problems.push(format!("{module} imports {import}, which is in no layer of LAYERS"));
                continue;
            };
            let task_to_task = LAYERS[from].0 == "task folders" && from == to;
            if to > from || task_to_task {
                problems.push(format!(
                    "{module} ({}) imports {import} ({}): {}",
                    LAYERS[from].0,
                    LAYERS[to].0,
                    if task_to_task { "a task imports another task" } else { "an import climbs" }
                ));
            }
        }
        if let Some(circle) = circle_through(&graph, module) {
            problems.push(format!("circle: {}", circle.join(" -> ")));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Every file of kiln-train as its module path (`detect::task`; `detect` for `detect/mod.rs`; `crate` for
/// `lib.rs`) with its code.
fn file_modules() -> BTreeMap<String, String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("train/src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files
        .into_iter()
        .map(|file| {
            let relative = file.strip_prefix(&src).unwrap().with_extension("");
            let parts: Vec<String> =
                relative.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
            let parts: Vec<&str> = parts.iter().map(String::as_str).filter(|p| *p != "mod").collect();
            let module = if parts == ["lib"] { "crate".to_string() } else { parts.join("::") };
            (module, code(&std::fs::read_to_string(&file).unwrap()))
        })
        .collect()
}

/// The paths a source names through `crate::`, `super::` or `self::`, with `{a, b::C}` groups expanded one level
/// (as `super::a`, `super::b::C`).
fn named_paths(code: &str) -> Vec<String> {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut paths = Vec::new();
    for (i, _) in code.match_indices("::") {
        let before = &code[..i];
        let start = before.trim_end_matches(is_ident).len();
        let head = &before[start..];
        if !matches!(head, "crate" | "super" | "self") || before[..start].ends_with("::") {
            continue;
        }
        let mut end = i;
        let rest = &code[i..];
        let mut k = 0;
        while rest[k..].starts_with("::") && rest[k + 2..].starts_with(|c: char| is_ident(c)) {
            k += 2 + rest[k + 2..].chars().take_while(|c| is_ident(*c)).count();
            end = i + k;
        }
        let path = &code[start..end];
        paths.push(path.to_string());
        if let Some(group) = code[end..].strip_prefix("::{") {
            let group = &group[..group.find(';').unwrap_or(group.len())];
            let mut depth = 0;
            let mut item_start = Some(0);
            for (k, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = Some(k + 1),
                    c if depth == 0 && item_start.is_some() && !c.is_whitespace() => {
                        let item: String = group[k..].chars().take_while(|c| is_ident(*c) || *c == ':').collect();
                        let item = item.trim_end_matches(':');
                        if !item.is_empty() && item != "self" {
                            paths.push(format!("{path}::{item}"));
                        }
                        item_start = None;
                    }
                    _ => {}
                }
            }
        }
    }
    paths
}

/// The module a path named in `module` leads to: the longest prefix of it that is a module, or `None`.
fn module_of(path: &str, module: &str, modules: &BTreeSet<String>) -> Option<String> {
    let mut parts: Vec<&str> = path.split("::").collect();
    let mut base: Vec<&str> = if module == "crate" { Vec::new() } else { module.split("::").collect() };
    match parts.first() {
        Some(&"crate") => base.clear(),
        Some(&"self") => {}
        Some(&"super") => {
            while parts.first() == Some(&"super") {
                base.pop();
                parts.remove(0);
            }
            parts.insert(0, "self");
        }
        _ => return None,
    }
    parts.remove(0);
    (1..=parts.len())
        .rev()
        .map(|n| [base.clone(), parts[..n].to_vec()].concat().join("::"))
        .find(|m| modules.contains(m))
}

/// File module -> the file modules it imports (its own ancestors aside: a folder's re-exports of its files).
fn file_graph() -> BTreeMap<String, BTreeSet<String>> {
    let files = file_modules();
    let modules: BTreeSet<String> = files.keys().cloned().collect();
    files
        .iter()
        .map(|(module, code)| {
            let imports = named_paths(code)
                .iter()
                .filter_map(|path| module_of(path, module, &modules))
                .filter(|m| m != module && !module.starts_with(&format!("{m}::")))
                .collect();
            (module.clone(), imports)
        })
        .collect()
}

#[test]
fn no_file_imports_in_a_circle() {
    let graph = file_graph();
    assert!(graph["detect::report"].contains("detect::setup"), "the file graph sees super:: imports");
    let circles: Vec<String> =
        graph.keys().filter_map(|module| circle_through(&graph, module)).map(|circle| circle.join(" -> ")).collect();
    assert!(circles.is_empty(), "import circles between files:\n{}", circles.join("\n"));
}

#[test]
fn the_checker_sees_imports_and_climbs() {
    let found = imported_modules(&code(
        "use crate::config::{TaskKind, TrainConfig};\nuse crate::{data::Split, engine, Error};\n// crate::tasks\nfn f() { crate::detect::x(); }",
    ));
    let expected: BTreeSet<String> = ["config", "data", "detect", "engine", "error"].map(String::from).into();
    assert_eq!(found, expected);
    let graph: BTreeMap<String, BTreeSet<String>> =
        [("config".to_string(), ["engine".to_string()].into()), ("engine".to_string(), ["config".to_string()].into())]
            .into();
    assert_eq!(circle_through(&graph, "config").unwrap(), ["config", "engine", "config"]);
    let modules: BTreeSet<String> = ["detect", "detect::task", "detect::setup", "data"].map(String::from).into();
    let code = "use super::setup::{make_loader, open_dataset};\nuse crate::data::{Batches, Split};";
    let found: BTreeSet<String> =
        named_paths(code).iter().filter_map(|p| module_of(p, "detect::task", &modules)).collect();
    assert_eq!(found, ["data", "detect::setup"].map(String::from).into());
    assert!(
        layer_of("data") < layer_of("config")
            && layer_of("config") < layer_of("engine")
            && layer_of("classify") < layer_of("tasks")
    );
}

#[test]
fn the_tuner_builds_without_libtorch() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args(["tree", "--offline", "-p", "kiln-tune", "-e", "normal", "--prefix", "none", "--format", "{p}"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(tree.lines().any(|l| l.starts_with("kiln-tune ")) && tree.contains("rusqlite"), "{tree}");
    for crate_name in ["tch ", "torch-sys ", "kiln-train ", "kiln-models "] {
        assert!(!tree.lines().any(|l| l.starts_with(crate_name)), "kiln-tune depends on {crate_name}:\n{tree}");
    }
}

//! kiln-train's module graph, read from its `crate::` paths: no circles between its top-level modules, and every
//! import points down the layers ARCHITECTURE.md lists (foundation, data, config, run plumbing, engine, task
//! folders, registry). A task folder imports no other task; the config and the engine import no task. Also: the
//! tuner crate builds without libtorch.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layer of each top-level module of kiln-train, lowest first.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "foundation",
        &["error", "fsutil", "native", "allocator", "device", "precision", "progress", "metrics", "plots", "synthetic"],
    ),
    ("data", &["data"]),
    ("config", &["config"]),
    ("run plumbing", &["checkpoint", "run_dir", "optim", "step_timer", "export"]),
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

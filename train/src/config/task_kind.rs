//! What a config trains: a task's name. kiln's own tasks are [`TaskKind::Classify`], [`TaskKind::Detect`] and
//! [`TaskKind::Ocr`] (the ones the CLI knows, [`TaskKind::ALL`]); a task defined outside kiln, an application's own
//! `Task`, has a name of its own ([`TaskKind::new`]) and runs on the same engine.

use std::collections::BTreeSet;
use std::str::FromStr;
use std::sync::Mutex;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A task's name: lowercase ASCII letters, digits, `_` and `-` (it names the `runs/<task>/` folder and the
/// exported model's `task`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskKind(&'static str);

#[allow(non_upper_case_globals)]
impl TaskKind {
    /// Image classification.
    pub const Classify: TaskKind = TaskKind("classify");
    /// Object detection.
    pub const Detect: TaskKind = TaskKind("detect");
    /// Text-line recognition.
    pub const Ocr: TaskKind = TaskKind("ocr");

    /// kiln's own tasks, in the order the CLI lists them.
    pub const ALL: [TaskKind; 3] = [TaskKind::Classify, TaskKind::Detect, TaskKind::Ocr];

    /// A task of this name (for a `Task`'s `KIND`); the name must be valid ([`TaskKind::parse_name`]).
    pub const fn new(name: &'static str) -> TaskKind {
        TaskKind(name)
    }

    pub fn name(self) -> &'static str {
        self.0
    }

    /// Whether this is one of kiln's own tasks.
    pub fn is_builtin(self) -> bool {
        TaskKind::ALL.contains(&self)
    }

    /// The task named `name`, any valid name (a config may name an application's task); names are interned, so
    /// each distinct name is stored once for the life of the process.
    pub fn parse_name(name: &str) -> Result<TaskKind, String> {
        let name = name.trim();
        if let Some(known) = TaskKind::ALL.into_iter().find(|t| t.0.eq_ignore_ascii_case(name)) {
            return Ok(known);
        }
        let valid = !name.is_empty()
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !valid {
            return Err(format!("'{name}' is not a task name (lowercase letters, digits, '_' and '-')"));
        }
        static NAMES: Mutex<BTreeSet<&'static str>> = Mutex::new(BTreeSet::new());
        let mut names = NAMES.lock().unwrap_or_else(|e| e.into_inner());
        let interned = match names.get(name) {
            Some(n) => *n,
            None => {
                let leaked: &'static str = Box::leak(name.to_string().into_boxed_str());
                names.insert(leaked);
                leaked
            }
        };
        Ok(TaskKind(interned))
    }
}

impl Default for TaskKind {
    fn default() -> Self {
        TaskKind::Classify
    }
}

impl std::fmt::Debug for TaskKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::fmt::Display for TaskKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl FromStr for TaskKind {
    type Err = String;
    /// One of kiln's own tasks by name (`classify`, `detect`, `ocr`), as the CLI's `--task` takes it.
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        TaskKind::ALL.into_iter().find(|t| t.0.eq_ignore_ascii_case(s)).ok_or_else(|| {
            let names: Vec<&str> = TaskKind::ALL.iter().map(|t| t.0).collect();
            format!("unknown task '{s}' (one of: {})", names.join(", "))
        })
    }
}

impl Serialize for TaskKind {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.0)
    }
}

impl<'de> Deserialize<'de> for TaskKind {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        TaskKind::parse_name(&name).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_read_back_as_the_same_task_and_bad_names_are_refused() {
        for kind in TaskKind::ALL {
            assert_eq!(TaskKind::parse_name(kind.name()).unwrap(), kind);
            assert_eq!(kind.name().parse::<TaskKind>().unwrap(), kind);
            let yaml = serde_yaml::to_string(&kind).unwrap();
            assert_eq!(serde_yaml::from_str::<TaskKind>(&yaml).unwrap(), kind);
        }
        let custom = TaskKind::parse_name("brightness").unwrap();
        assert_eq!(custom, TaskKind::new("brightness"));
        assert!(!custom.is_builtin() && TaskKind::Ocr.is_builtin());
        assert!(std::ptr::eq(custom.name(), TaskKind::parse_name("brightness").unwrap().name()), "interned once");
        assert!("brightness".parse::<TaskKind>().unwrap_err().contains("one of: classify, detect, ocr"));
        assert!(TaskKind::parse_name("Bad Name").is_err() && TaskKind::parse_name("").is_err());
        assert!(serde_yaml::from_str::<TaskKind>("\"../x\"").is_err());
    }
}

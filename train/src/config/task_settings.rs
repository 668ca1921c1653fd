//! A task's own settings: the section of the config named after the task (`detect:`, `ocr:`), whose type the task
//! owns (`Task::Settings`, in its folder). The config keeps the sections as data and names no task's type; a task
//! reads its section with [`TrainConfig::task_settings`] (a missing key takes the type's default), and a run's
//! saved section is read with [`TrainConfig::load_saved`] (a key added after the run was saved takes the value
//! the run trained with).

use std::fmt::Debug;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use super::{TaskKind, TrainConfig};
use crate::{Error, Result};

/// The settings a task reads from its section of the config.
pub trait TaskSettings: Serialize + DeserializeOwned + Default + Clone + Debug {
    /// Keys added to the section after runs were saved without them: the dotted path within the section and the
    /// value such a run trained with.
    fn added_later() -> Vec<(&'static str, Value)> {
        Vec::new()
    }

    /// Checks what serde cannot, as `(key, reason)` with the key's dotted path from the config's top.
    fn validate(&self) -> std::result::Result<(), (String, String)> {
        Ok(())
    }
}

/// A task without settings of its own.
impl TaskSettings for () {}

/// Sets `path` (dotted) in `section` to `value` where its parent exists and it does not.
fn insert_missing(section: &mut Value, path: &str, value: Value) {
    let mut parts: Vec<&str> = path.split('.').collect();
    let Some(last) = parts.pop() else { return };
    let mut node = section;
    for part in parts {
        match node.get_mut(part) {
            Some(child) => node = child,
            None => return,
        }
    }
    if let Some(map) = node.as_object_mut() {
        map.entry(last.to_string()).or_insert(value);
    }
}

impl TrainConfig {
    /// The settings of this config's task from its section, checked; the defaults where there is no section.
    pub fn task_settings<S: TaskSettings>(&self) -> Result<S> {
        let key = self.task.name();
        let settings: S = match self.sections.get(key) {
            None | Some(Value::Null) => S::default(),
            Some(section) => serde_json::from_value(section.clone())
                .map_err(|e| Error::InvalidSetting { key: key.into(), reason: e.to_string() })?,
        };
        settings.validate().map_err(|(key, reason)| Error::InvalidSetting { key, reason })?;
        Ok(settings)
    }

    /// Writes `settings` as the section of this config's task (every key spelt out; none for `()`).
    pub fn set_task_settings<S: TaskSettings>(&mut self, settings: &S) {
        let key = self.task.name().to_string();
        match serde_json::to_value(settings).expect("settings serialise") {
            Value::Null => self.sections.remove(&key),
            section => self.sections.insert(key, section),
        };
    }

    /// Reads the config a run saved, its task's section as that run trained: keys added since
    /// ([`TaskSettings::added_later`]) take the value they had before they existed.
    pub fn load_saved<S: TaskSettings>(path: &Path) -> Result<Self> {
        let mut config = TrainConfig::load(path)?;
        config.fill_added_later::<S>();
        config.task_settings::<S>()?;
        Ok(config)
    }

    /// Gives the keys of the task's saved section added since ([`TaskSettings::added_later`]) the value they had
    /// before they existed: for a config a run saved (its `config.yaml`, the copy in its checkpoints).
    pub fn fill_added_later<S: TaskSettings>(&mut self) {
        if let Some(section) = self.sections.get_mut(self.task.name()) {
            for (key, value) in S::added_later() {
                insert_missing(section, key, value);
            }
        }
    }

    /// The keys of [`TrainConfig::sections`] that are no task's section (a misspelt setting lands there): every
    /// builtin task's name and this config's task's are sections.
    pub fn unknown_keys(&self) -> Vec<&str> {
        let is_task = |key: &str| key == self.task.name() || TaskKind::ALL.iter().any(|t| t.name() == key);
        self.sections.keys().map(String::as_str).filter(|k| !is_task(k)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Brightness {
        gain: f64,
        inner: Inner,
    }

    #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Inner {
        old: bool,
    }

    impl TaskSettings for Brightness {
        fn added_later() -> Vec<(&'static str, Value)> {
            vec![("gain", Value::from(2.0)), ("inner.old", Value::Bool(true))]
        }
        fn validate(&self) -> std::result::Result<(), (String, String)> {
            if self.gain < 0.0 {
                return Err(("brightness.gain".into(), format!("{} is negative", self.gain)));
            }
            Ok(())
        }
    }

    fn config() -> TrainConfig {
        TrainConfig { task: TaskKind::new("brightness"), data: "/d".into(), ..TrainConfig::default() }
    }

    #[test]
    fn a_section_is_read_with_defaults_written_in_full_and_checked() {
        let mut c = config();
        assert_eq!(c.task_settings::<Brightness>().unwrap(), Brightness::default(), "no section: defaults");
        c.sections.insert("brightness".into(), serde_json::json!({"inner": {}}));
        assert_eq!(c.task_settings::<Brightness>().unwrap(), Brightness::default(), "missing keys: defaults");
        c.set_task_settings(&Brightness { gain: 0.5, ..Brightness::default() });
        assert_eq!(c.sections["brightness"], serde_json::json!({"gain": 0.5, "inner": {"old": false}}));
        c.sections.insert("brightness".into(), serde_json::json!({"gain": -1.0}));
        let err = c.task_settings::<Brightness>().unwrap_err().to_string();
        assert!(err.contains("brightness.gain") && err.contains("negative"), "{err}");
        c.sections.insert("brightness".into(), serde_json::json!({"gian": 1.0}));
        let err = c.task_settings::<Brightness>().unwrap_err().to_string();
        assert!(err.contains("brightness") && err.contains("gian"), "{err}");
        c.set_task_settings(&());
        assert!(!c.sections.contains_key("brightness"), "a task without settings has no section");
    }

    #[test]
    fn a_saved_section_reads_keys_added_later_as_the_run_trained() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        let mut c = config();
        c.sections.insert("brightness".into(), serde_json::json!({"inner": {}}));
        std::fs::write(&path, c.to_yaml()).unwrap();
        let saved = TrainConfig::load_saved::<Brightness>(&path).unwrap();
        let expected = Brightness { gain: 2.0, inner: Inner { old: true } };
        assert_eq!(saved.task_settings::<Brightness>().unwrap(), expected);
        // Keys the run saved win, and a fresh read takes today's defaults.
        c.set_task_settings(&Brightness { gain: 0.25, inner: Inner { old: false } });
        std::fs::write(&path, c.to_yaml()).unwrap();
        let saved = TrainConfig::load_saved::<Brightness>(&path).unwrap();
        assert_eq!(saved.task_settings::<Brightness>().unwrap().gain, 0.25);
        assert!(!saved.task_settings::<Brightness>().unwrap().inner.old);
    }

    #[test]
    fn keys_that_are_no_tasks_section_are_unknown() {
        let mut c = config();
        for key in ["brightness", "detect", "ocr", "learning_rate"] {
            c.sections.insert(key.into(), Value::Null);
        }
        assert_eq!(c.unknown_keys(), vec!["learning_rate"]);
    }
}

//! Tuning kiln runs: everything of [`kiln_tune`] (samplers, pruners, importances, storage, the study loop), with
//! [`run_study`] training the config's task through kiln-train's trainer ([`crate::study`]).

pub use kiln_tune::*;

pub use crate::study::{apply_params, default_space, plot_importances, run_study, study_dir};

//! `kiln study show`: a study's trials, its best trial and the parameter importances; `kiln study migrate`: a study
//! database in kiln's earlier tables converted to Optuna's schema.

use clap::{Args, Subcommand};

use kiln_train::tune::{best_trial, importances, migrate, SearchSpace, StorageUrl, TrialRecord};

#[derive(Subcommand, Debug)]
pub enum StudyCommand {
    /// Print the trials table, the best trial and the parameter importances (fANOVA over the complete trials).
    Show(ShowArgs),
    /// Convert a study database written by kiln before it used Optuna's schema, in place, keeping a copy of the old
    /// data (a SQLite file: FILE.pre-optuna.bak; PostgreSQL: the old tables renamed *_pre_optuna).
    Migrate(MigrateArgs),
}

#[derive(Args, Debug)]
pub struct MigrateArgs {
    /// A SQLite file, sqlite:///FILE or postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE
    #[arg(value_name = "FILE_OR_URL")]
    pub storage: String,
}

/// A study database named by URL or, for SQLite, by its path.
fn storage_url(text: &str) -> anyhow::Result<StorageUrl> {
    if text.contains("://") {
        Ok(StorageUrl::parse(text)?)
    } else {
        Ok(StorageUrl::Sqlite(text.into()))
    }
}

#[derive(Args, Debug)]
pub struct ShowArgs {
    /// sqlite:///FILE or postgres://USER@HOST[:PORT]/DATABASE (default: $KILN_STORAGE; the password from
    /// PGPASSWORD or ~/.pgpass)
    #[arg(long, value_name = "URL", env = "KILN_STORAGE")]
    pub storage: String,
    #[arg(long, default_value = "study")]
    pub study: String,
}

/// The trials as a table; `objective` names the value column.
pub fn print_trials(trials: &[TrialRecord], objective: &str) {
    println!("| trial | state | {objective} | epochs | params | reason |");
    println!("|---|---|---|---|---|---|");
    for t in trials {
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            t.number,
            t.state.name(),
            t.value.map(|v| format!("{v:.4}")).unwrap_or_else(|| "-".into()),
            t.intermediate.len(),
            serde_json::to_string(&t.params).unwrap_or_default(),
            t.reason.as_deref().unwrap_or("")
        );
    }
}

/// The best trial's number, value and parameters, or that none completed.
pub fn print_best(best: Option<&TrialRecord>, objective: &str) -> anyhow::Result<()> {
    match best {
        Some(b) => println!(
            "best trial {} ({objective} {:.4}): {}",
            b.number,
            b.value.unwrap_or(f64::NAN),
            serde_json::to_string(&b.params)?
        ),
        None => println!("no trial completed"),
    }
    Ok(())
}

pub fn run(command: StudyCommand) -> anyhow::Result<()> {
    let args = match command {
        StudyCommand::Show(args) => args,
        StudyCommand::Migrate(args) => {
            let url = storage_url(&args.storage)?;
            let done = migrate(&url)?;
            println!(
                "{url}: {} studies with {} trials now in Optuna's schema; the old data is kept in {}",
                done.studies, done.trials, done.backup
            );
            return Ok(());
        }
    };
    let url = StorageUrl::parse(&args.storage)?;
    if let StorageUrl::Sqlite(path) = &url {
        // Opening would create an empty database.
        anyhow::ensure!(path.is_file(), "{}: no such study database", path.display());
    }
    let mut storage = url.open()?;
    let Some(direction) = storage.study_direction(&args.study)? else {
        anyhow::bail!("{url}: no study named '{}' (studies: {})", args.study, storage.studies()?.join(", "));
    };
    let study = storage.study(&args.study, direction)?;
    let trials = storage.trials(study)?;
    let objective = format!("value ({})", direction.name());
    print_trials(&trials, &objective);
    print_best(best_trial(&trials, direction), &objective)?;
    if let Some(space) = storage.space(study)? {
        let space: SearchSpace = serde_json::from_str(&space)?;
        let shares = importances(&space, &trials);
        if !shares.is_empty() {
            println!("\n| parameter | importance |\n|---|---|");
            for (name, share) in shares {
                println!("| {name} | {share:.3} |");
            }
        }
    }
    Ok(())
}

//! Which test groups skipped, for `make test`'s closing line: a skipping test appends `group<TAB>test<TAB>reason`
//! to the file `KILN_SKIP_LOG` names (when it is set), and `scripts/skip_summary.sh` reads it after the run, so a
//! local green run that skipped the PostgreSQL or Python tests says so.

use std::io::Write;
use std::path::Path;

/// Records that `test` of `group` (`postgres`, `python`) skipped because of `reason`, in `KILN_SKIP_LOG`.
pub fn record_skip(group: &str, test: &str, reason: &str) {
    let Some(log) = std::env::var_os("KILN_SKIP_LOG") else { return };
    if let Err(e) = append_skip(Path::new(&log), group, test, reason) {
        eprintln!("could not record the skip in {}: {e}", Path::new(&log).display());
    }
}

/// One line per skip, appended in one write: whole lines even from tests that skip at once.
fn append_skip(log: &Path, group: &str, test: &str, reason: &str) -> std::io::Result<()> {
    let clean = |s: &str| s.replace(['\t', '\n'], " ");
    let line = format!("{}\t{}\t{}\n", clean(group), clean(test), clean(reason));
    std::fs::OpenOptions::new().create(true).append(true).open(log)?.write_all(line.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_skip_is_one_line_in_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("skipped.tsv");
        append_skip(&log, "postgres", "a test", "no initdb\non PATH").unwrap();
        append_skip(&log, "python", "another", "no\tnetwork").unwrap();
        let text = std::fs::read_to_string(&log).unwrap();
        assert_eq!(text, "postgres\ta test\tno initdb on PATH\npython\tanother\tno network\n");
    }
}

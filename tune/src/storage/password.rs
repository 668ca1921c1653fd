//! Where a PostgreSQL password comes from when the URL has none, as libpq looks: `PGPASSWORD`, then the password
//! file (`PGPASSFILE`, else `~/.pgpass`: lines of `host:port:database:user:password`, `*` matching anything, `\:`
//! and `\\` escaped, the first matching line winning). The password file is skipped, with a warning, when others
//! can read it. So a password need never be given on the command line, where `ps` shows it.

use std::path::{Path, PathBuf};

/// What a connection is for, to find its line in the password file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub database: String,
    pub user: String,
}

impl Target {
    /// The target of a client config: its first host (a socket directory counts as `localhost`, as libpq has it),
    /// its first port (5432 by default), its database (the user's name by default) and its user.
    pub fn of(config: &postgres::Config) -> Option<Target> {
        let host = match config.get_hosts().first() {
            Some(postgres::config::Host::Tcp(host)) => host.clone(),
            #[cfg(unix)]
            Some(postgres::config::Host::Unix(_)) => "localhost".into(),
            None => "localhost".into(),
        };
        let user = config.get_user()?.to_string();
        Some(Target {
            host,
            port: config.get_ports().first().copied().unwrap_or(5432),
            database: config.get_dbname().unwrap_or(&user).to_string(),
            user,
        })
    }
}

/// The fields of one password-file line, unescaped; `None` for comments, blank lines and lines without 5 fields.
fn fields(line: &str) -> Option<[String; 5]> {
    if line.trim_start().starts_with('#') || line.trim().is_empty() {
        return None;
    }
    let mut out: Vec<String> = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.last_mut()?.push(chars.next().unwrap_or('\\')),
            ':' if out.len() < 5 => out.push(String::new()),
            c => out.last_mut()?.push(c),
        }
    }
    out.try_into().ok()
}

/// The password of the first line of `text` (a password file) that matches `target`.
pub fn lookup(text: &str, target: &Target) -> Option<String> {
    let port = target.port.to_string();
    let wanted = [target.host.as_str(), port.as_str(), target.database.as_str(), target.user.as_str()];
    text.lines().filter_map(fields).find_map(|[host, port, database, user, password]| {
        let all = [host, port, database, user];
        all.iter().zip(wanted).all(|(field, want)| field == "*" || field == want).then_some(password)
    })
}

/// The password file libpq would read.
fn password_file() -> Option<PathBuf> {
    match std::env::var_os("PGPASSFILE") {
        Some(file) => Some(PathBuf::from(file)),
        None => std::env::var_os("HOME").map(|home| Path::new(&home).join(".pgpass")),
    }
}

/// Whether the file may hold secrets: not readable by group or others (libpq's rule).
fn private(path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o077 == 0)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        true
    }
}

/// The password for `target` from `PGPASSWORD`, else from the password file.
pub fn from_environment(target: &Target) -> Option<String> {
    if let Some(password) = std::env::var("PGPASSWORD").ok().filter(|p| !p.is_empty()) {
        return Some(password);
    }
    let file = password_file()?;
    let text = std::fs::read_to_string(&file).ok()?;
    if !private(&file) {
        eprintln!("warning: password file {} is readable by others (chmod 0600 it); it is not used", file.display());
        return None;
    }
    lookup(&text, target)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(host: &str, database: &str) -> Target {
        Target { host: host.into(), port: 5433, database: database.into(), user: "kiln".into() }
    }

    #[test]
    fn the_first_matching_line_gives_the_password_with_wildcards_and_escapes() {
        let file = "# studies\n\
                    db.lan:5433:other:kiln:wrong\n\
                    db.lan:5433:studies:kiln:p\\:w\\\\d\n\
                    *:*:*:kiln:fallback\n";
        assert_eq!(lookup(file, &target("db.lan", "studies")).as_deref(), Some("p:w\\d"));
        assert_eq!(lookup(file, &target("elsewhere", "x")).as_deref(), Some("fallback"));
        let other_user = Target { user: "root".into(), ..target("db.lan", "studies") };
        assert_eq!(lookup(file, &other_user), None);
        assert_eq!(lookup("db.lan:5433:studies:kiln\n", &target("db.lan", "studies")), None, "4 fields");
        assert_eq!(lookup("*:*:*:*:a:b\n", &target("h", "d")).as_deref(), Some("a:b"), "the password keeps its colons");
    }

    #[test]
    fn a_url_names_the_line_it_needs() {
        let config: postgres::Config = "postgres://kiln@db.lan:5433/studies".parse().unwrap();
        assert_eq!(Target::of(&config), Some(target("db.lan", "studies")));
        let config: postgres::Config = "postgres://kiln@db.lan".parse().unwrap();
        assert_eq!(Target::of(&config).unwrap(), Target { port: 5432, ..target("db.lan", "kiln") });
    }

    #[cfg(unix)]
    #[test]
    fn a_password_file_others_can_read_is_not_used() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pgpass");
        std::fs::write(&file, "*:*:*:*:secret\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(!private(&file));
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(private(&file));
    }
}

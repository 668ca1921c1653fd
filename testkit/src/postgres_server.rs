//! A throwaway PostgreSQL server for tests: `initdb` into a temporary directory, `pg_ctl start` on a free loopback
//! port with trust authentication (or, with [`ServerOptions`], a password and TLS only, with a certificate made by
//! `openssl` for the test), `pg_ctl restart` on demand, `pg_ctl stop` when dropped. The server binaries come from Debian's `postgresql`
//! package: `$KILN_POSTGRES_BIN`, else the newest `/usr/lib/postgresql/*/bin`, else `pg_config --bindir`, else
//! `PATH`. PostgreSQL refuses to run as root, so as root the server runs as the `postgres` user that the package
//! creates.
//!
//! Where no server can be started, [`PostgresServer::start_or_skip`] prints `SKIPPED` and why, and returns `None`;
//! with `KILN_REQUIRE_POSTGRES=1` (set by `.ci/run`) it panics instead, so CI cannot pass without the server.

use std::ffi::CString;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A running server; stopped (immediately) and deleted on drop.
pub struct PostgresServer {
    dir: tempfile::TempDir,
    bin: PathBuf,
    run_as: Option<String>,
    port: u16,
    /// The options the server was started with (for a restart).
    options: String,
    password: Option<String>,
    tls: Option<TlsFiles>,
}

/// How the server authenticates and encrypts.
#[derive(Clone, Debug, Default)]
pub struct ServerOptions {
    /// The superuser's password, checked with SCRAM-SHA-256 on TCP; none: trust.
    pub password: Option<String>,
    /// TLS with a certificate for 127.0.0.1 and localhost, signed by a CA made for the test; TCP connections
    /// without TLS are refused.
    pub tls: bool,
}

/// The certificates of a TLS server: the CA that signed the server's, and another CA that did not.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub other_ca: PathBuf,
}

/// The database superuser `initdb` creates.
const USER: &str = "kiln";

impl PostgresServer {
    /// Starts a server with trust authentication and no TLS, or says why it could not.
    pub fn start() -> Result<Self, String> {
        Self::start_with(&ServerOptions::default())
    }

    /// Starts a server as `options` say, or says why it could not.
    pub fn start_with(options: &ServerOptions) -> Result<Self, String> {
        let bin = find_bin()?;
        let run_as = if unsafe { libc::geteuid() } == 0 { Some("postgres".to_string()) } else { None };
        let dir = tempfile::Builder::new().prefix("kiln-pg").tempdir().map_err(|e| format!("temp dir: {e}"))?;
        if let Some(user) = &run_as {
            let (uid, gid) = user_ids(user)
                .ok_or_else(|| format!("running as root and there is no '{user}' user to run the server as"))?;
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).map_err(|e| format!("chown: {e}"))?;
        }
        let data = dir.path().join("data");
        let mut server =
            Self { dir, bin, run_as, port: 0, options: String::new(), password: options.password.clone(), tls: None };
        let mut initdb = vec!["-D", path_str(&data), "-A", "trust", "-U", USER, "-E", "UTF8", "--no-sync"];
        initdb.push("--no-instructions");
        let pwfile = server.dir.path().join("pwfile");
        if let Some(password) = &options.password {
            std::fs::write(&pwfile, password).map_err(|e| format!("password file: {e}"))?;
            server.give_to_server(&pwfile)?;
            initdb.extend(["--pwfile", path_str(&pwfile), "--auth-host", "scram-sha-256"]);
        }
        server.run("initdb", &initdb)?;
        let mut extra = String::new();
        if options.tls {
            let files = server.make_certificates()?;
            let method = if options.password.is_some() { "scram-sha-256" } else { "trust" };
            let hba = format!("local all all trust\nhostssl all all 127.0.0.1/32 {method}\n");
            std::fs::write(data.join("pg_hba.conf"), hba).map_err(|e| format!("pg_hba.conf: {e}"))?;
            extra = format!(
                " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                path_str(&server.dir.path().join("server.crt")),
                path_str(&server.dir.path().join("server.key"))
            );
            server.tls = Some(files);
        }
        let mut last_error = String::new();
        // A free port can be taken between probing and binding; try a few.
        for _ in 0..3 {
            server.port = free_port()?;
            server.options = format!(
                "-p {} -h 127.0.0.1 -k {} -c fsync=off -c synchronous_commit=off -c full_page_writes=off{extra}",
                server.port,
                path_str(server.dir.path())
            );
            let log = server.dir.path().join("server.log");
            match server.run(
                "pg_ctl",
                &["-D", path_str(&data), "-l", path_str(&log), "-o", &server.options, "-w", "-t", "30", "start"],
            ) {
                Ok(()) => return Ok(server),
                Err(e) => {
                    let tail = std::fs::read_to_string(&log).unwrap_or_default();
                    last_error =
                        format!("{e}; server log: {}", tail.lines().rev().take(5).collect::<Vec<_>>().join(" | "));
                }
            }
        }
        Err(last_error)
    }

    /// [`start`](Self::start), or `None` after printing `SKIPPED <test>: <reason>`; panics instead when
    /// `KILN_REQUIRE_POSTGRES=1`.
    pub fn start_or_skip(test: &str) -> Option<Self> {
        Self::start_with_or_skip(test, &ServerOptions::default())
    }

    /// [`start_with`](Self::start_with), or `None` after printing `SKIPPED <test>: <reason>` (a failure when
    /// `KILN_REQUIRE_POSTGRES=1`).
    pub fn start_with_or_skip(test: &str, options: &ServerOptions) -> Option<Self> {
        match Self::start_with(options) {
            Ok(server) => Some(server),
            Err(reason) if std::env::var("KILN_REQUIRE_POSTGRES").as_deref() == Ok("1") => {
                panic!("{test}: KILN_REQUIRE_POSTGRES=1 but no PostgreSQL server could be started: {reason}")
            }
            Err(reason) => {
                eprintln!("SKIPPED {test}: no PostgreSQL server could be started: {reason}");
                crate::record_skip("postgres", test, &reason);
                None
            }
        }
    }

    /// The connection URL of the server's `postgres` database (without the password).
    pub fn url(&self) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/postgres", self.port)
    }

    /// The superuser's password, if the server has one.
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// The CA files of a TLS server.
    pub fn tls(&self) -> Option<&TlsFiles> {
        self.tls.as_ref()
    }

    /// Restarts the server on the same port (`pg_ctl restart -m fast`): every open connection is terminated, and
    /// new ones are accepted once it is up again.
    pub fn restart(&self) -> Result<(), String> {
        let data = self.dir.path().join("data");
        let log = self.dir.path().join("server.log");
        self.run(
            "pg_ctl",
            &[
                "-D",
                path_str(&data),
                "-l",
                path_str(&log),
                "-o",
                &self.options,
                "-m",
                "fast",
                "-w",
                "-t",
                "30",
                "restart",
            ],
        )
    }

    /// A CA, a server certificate it signs (for 127.0.0.1 and localhost) with its key, and an unrelated CA, made
    /// with the `openssl` command.
    fn make_certificates(&self) -> Result<TlsFiles, String> {
        let dir = self.dir.path();
        let openssl = |args: &[&str]| -> Result<(), String> {
            let output = Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .map_err(|e| format!("openssl (needed for a TLS test server): {e}"))?;
            check("openssl", &output)
        };
        for ca in ["ca", "other_ca"] {
            openssl(&[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN=kiln test {ca}"),
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.crt"),
            ])?;
        }
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ])?;
        std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n")
            .map_err(|e| format!("san.ext: {e}"))?;
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            "server.crt",
        ])?;
        for file in ["server.crt", "server.key"] {
            self.give_to_server(&dir.join(file))?;
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.join("server.key"), std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("server.key: {e}"))?;
        Ok(TlsFiles { ca: dir.join("ca.crt"), other_ca: dir.join("other_ca.crt") })
    }

    /// Makes `path` the server user's when the server runs as another user.
    fn give_to_server(&self, path: &Path) -> Result<(), String> {
        if let Some(user) = &self.run_as {
            let (uid, gid) = user_ids(user).ok_or_else(|| format!("no '{user}' user"))?;
            std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(|e| format!("chown: {e}"))?;
        }
        Ok(())
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    fn run(&self, tool: &str, args: &[&str]) -> Result<(), String> {
        let program = self.bin.join(tool);
        let mut command = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&program);
                c
            }
            None => Command::new(&program),
        };
        let output = command.args(args).output().map_err(|e| format!("{}: {e}", program.display()))?;
        check(tool, &output)
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = self.run("pg_ctl", &["-D", path_str(&data), "-m", "immediate", "-w", "stop"]);
    }
}

fn check(tool: &str, output: &Output) -> Result<(), String> {
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    Err(format!("{tool} failed ({}): {}", output.status, stderr.trim()))
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

fn find_bin() -> Result<PathBuf, String> {
    let has_server = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Some(dir) = std::env::var_os("KILN_POSTGRES_BIN") {
        let dir = PathBuf::from(dir);
        return if has_server(&dir) {
            Ok(dir)
        } else {
            Err(format!("KILN_POSTGRES_BIN={} has no initdb and pg_ctl", dir.display()))
        };
    }
    let mut debian: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin)| has_server(bin))
        .collect();
    debian.sort();
    if let Some((_, bin)) = debian.pop() {
        return Ok(bin);
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if has_server(&dir) {
            return Ok(dir);
        }
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .find(|dir| has_server(dir))
        .ok_or_else(|| "no PostgreSQL server binaries (initdb, pg_ctl); install Debian's postgresql package".into())
}

fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free port: {e}"))?;
    listener.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

fn user_ids(name: &str) -> Option<(u32, u32)> {
    let name = CString::new(name).ok()?;
    // SAFETY: getpwnam returns a pointer into static storage or null; it is read at once.
    let entry = unsafe { libc::getpwnam(name.as_ptr()) };
    if entry.is_null() {
        return None;
    }
    // SAFETY: non-null, as checked.
    let entry = unsafe { &*entry };
    Some((entry.pw_uid, entry.pw_gid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_starts_accepts_connections_and_is_gone_after_drop() {
        let Some(server) = PostgresServer::start_or_skip("testkit server") else { return };
        let port = server.port();
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(), "server listens on {port}");
        let data = server.dir.path().to_path_buf();
        drop(server);
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "server stopped");
        assert!(!data.exists(), "data directory removed");
    }
}

//! Support for kiln's test suites (a dev-dependency only, never shipped): a throwaway PostgreSQL server and a
//! throwaway Python environment with the reference tools from PyPI.

mod postgres_server;
mod python_env;
mod skips;

pub use postgres_server::{PostgresServer, ServerOptions, TlsFiles};
pub use python_env::PythonEnv;
pub use skips::record_skip;

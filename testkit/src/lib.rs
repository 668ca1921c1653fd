//! Support for kiln's test suites (a dev-dependency only, never shipped).

mod postgres_server;

pub use postgres_server::PostgresServer;

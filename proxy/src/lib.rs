//! doze's data path: a MySQL/MariaDB proxy that reads the handshake, finds the project,
//! authenticates the client itself, wakes the project's compute and relays the session.
//!
//! The modules follow the life of a connection:
//! [`accept`] -> [`handshake`] -> [`route`] -> [`auth`] -> wake and backend login (through
//! [`connector`], over [`backend`]) -> [`relay`]. [`connection`] strings the phases together;
//! [`control`] is the seam to the control plane (embedded, or [`static_routes`]).

pub mod accept;
pub mod auth;
pub mod backend;
pub mod config;
pub mod connection;
pub mod connector;
pub mod control;
pub mod error;
pub mod handshake;
pub mod limits;
pub mod metrics;
pub mod names;
pub mod pool;
pub mod proxy_protocol;
pub mod relay;
pub mod route;
pub mod sessions;
pub mod static_routes;
pub mod stream;
pub mod throttle;
pub mod tls;

pub use config::ProxyConfig;
pub use connection::Shared;
pub use control::Control;

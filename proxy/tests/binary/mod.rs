//! Helpers for tests that drive the `doze` binary: start `doze serve` on free ports, call its
//! admin API, stop or kill it.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

pub const TOKEN: &str = "binary-test-token-0123456789";

/// The `doze` binary: cargo's, or `DOZE_BIN` when the test binary was copied elsewhere (the
/// non-root CI run).
pub fn doze() -> String {
    std::env::var("DOZE_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_doze").to_owned())
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One admin API call: (status, JSON body).
pub fn api(port: u16, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return (0, Value::Null);
    };
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let json = answer
        .split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b).ok())
        .unwrap_or(Value::Null);
    (status, json)
}

/// A running `doze serve`; SIGTERM (and a wait) when dropped.
pub struct Doze {
    pub child: Child,
    pub admin: u16,
    pub proxy: u16,
}

impl Doze {
    /// `doze serve` with `args`, the proxy and the admin API on free ports, the token from the
    /// environment; returns once /healthz answers.
    pub fn serve(args: &[String]) -> Doze {
        let doze = Self::spawn(args, Stdio::null());
        assert!(doze.healthy(), "doze serve {args:?} did not come up");
        doze
    }

    /// Whether /healthz answers within 15 s.
    pub fn healthy(&self) -> bool {
        for _ in 0..300 {
            if api(self.admin, "GET", "/healthz", None).0 == 200 {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// `doze serve` with `args`, not waited for; stderr as given.
    pub fn spawn(args: &[String], stderr: Stdio) -> Doze {
        let (admin, proxy) = (free_port(), free_port());
        let child = Command::new(doze())
            .arg("serve")
            .args(args)
            .arg("--proxy-listen")
            .arg(format!("127.0.0.1:{proxy}"))
            .arg("--admin-listen")
            .arg(format!("127.0.0.1:{admin}"))
            .env("DOZE_ADMIN_TOKEN", TOKEN)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        Doze {
            child,
            admin,
            proxy,
        }
    }

    /// SIGKILL: the process dies without any cleanup.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// A project with role `app` (password `app-password-1`) and a compute with `config`;
    /// returns (project id, compute id).
    pub fn project(
        &self,
        name: &str,
        project_config: Value,
        compute_config: Value,
    ) -> (String, String) {
        let (status, p) = api(
            self.admin,
            "POST",
            "/api/v1/projects",
            Some(serde_json::json!({"name": name, "config": project_config})),
        );
        assert_eq!(status, 201, "{p}");
        let id = p["id"].as_str().unwrap().to_owned();
        let (status, r) = api(
            self.admin,
            "POST",
            &format!("/api/v1/projects/{id}/roles"),
            Some(serde_json::json!({"name": "app", "password": "app-password-1"})),
        );
        assert_eq!(status, 201, "{r}");
        let (status, c) = api(
            self.admin,
            "POST",
            &format!("/api/v1/projects/{id}/compute"),
            Some(serde_json::json!({"config": compute_config})),
        );
        assert_eq!(status, 201, "{c}");
        (id, c["id"].as_str().unwrap().to_owned())
    }

    /// Client options for `<project>.app` through this doze's proxy.
    pub fn opts(&self, project: &str) -> mysql_async::OptsBuilder {
        mysql_async::OptsBuilder::default()
            .ip_or_hostname("127.0.0.1")
            .tcp_port(self.proxy)
            .prefer_socket(false)
            .user(Some(format!("{project}.app")))
            .pass(Some("app-password-1"))
    }
}

impl Drop for Doze {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}

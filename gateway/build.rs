//! Records the git commit doze is built from (`DOZE_GIT_COMMIT`, or `unknown` outside a git
//! checkout), for `doze --version`, `doze version` and `GET /api/v1/info`. A build from a
//! tarball can set `DOZE_GIT_COMMIT` itself.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=DOZE_GIT_COMMIT");
    for path in ["../.git/HEAD", "../.git/refs/heads", "../.git/packed-refs"] {
        if std::path::Path::new(path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    let commit = std::env::var("DOZE_GIT_COMMIT").ok().or_else(|| {
        Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .filter(|c| !c.is_empty())
    });
    println!(
        "cargo:rustc-env=DOZE_GIT_COMMIT={}",
        commit.as_deref().unwrap_or("unknown")
    );
}

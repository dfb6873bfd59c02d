//! `doze serve --routes routes.toml`: the proxy alone, with projects, backends and roles from a
//! file, the way ProxySQL users keep a config file. Nothing is woken; the backend is expected to
//! run.
//!
//! ```toml
//! [[project]]
//! name = "shop"                 # what clients name: shop.app, shop/db or SNI shop.<suffix>
//! id = "p-1234"                 # optional second key
//! backend = "127.0.0.1:3306"
//!
//! [[project.role]]
//! name = "app"
//! password_hash = "*6BB4837EB74329105EE4568DDA7DC67ED2CA2AD9"   # SELECT PASSWORD('...')
//! ```

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use doze_gateway::activity::{Activity, ProjectActivity};
use doze_gateway::{ColdStart, LookupError, RoleLookup, WakeError, WakeInfo};
use doze_protocol::native_password::parse_stored_hash;
use serde::Deserialize;

use crate::control::Control;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoutesFile {
    #[serde(default)]
    project: Vec<ProjectEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProjectEntry {
    name: String,
    id: Option<String>,
    backend: String,
    /// `"session"` (the default): backend sessions are reused; `"off"`: never.
    #[serde(default)]
    pool: PoolMode,
    #[serde(default)]
    role: Vec<RoleEntry>,
}

#[derive(Debug, Default, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum PoolMode {
    #[default]
    Session,
    Off,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleEntry {
    name: String,
    password_hash: String,
}

struct Project {
    id: String,
    name: String,
    backend: String,
    pooling: bool,
    roles: HashMap<String, [u8; 20]>,
}

/// Projects from a routes file, looked up by name or id.
pub struct StaticRoutes {
    /// Swapped whole by [`StaticRoutes::reload`]; read once per connection, never per packet.
    by_key: std::sync::RwLock<Arc<HashMap<String, Arc<Project>>>>,
    activity: Arc<Activity>,
}

impl StaticRoutes {
    /// Reads and checks a routes file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading routes file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("in routes file {}", path.display()))
    }

    /// Parses routes from TOML text.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        Ok(Self {
            by_key: std::sync::RwLock::new(Arc::new(Self::parse_map(text)?)),
            activity: Activity::new(),
        })
    }

    /// Reads the routes file again and serves its projects from now on (SIGHUP). Sessions
    /// already relayed are untouched. A file that does not load changes nothing: the error
    /// says why. Returns how many projects are served.
    pub fn reload(&self, path: &Path) -> anyhow::Result<usize> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading routes file {}", path.display()))?;
        let map =
            Self::parse_map(&text).with_context(|| format!("in routes file {}", path.display()))?;
        let projects = map
            .values()
            .map(|p| p.id.as_str())
            .collect::<std::collections::HashSet<_>>()
            .len();
        *self.by_key.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(map);
        Ok(projects)
    }

    fn parse_map(text: &str) -> anyhow::Result<HashMap<String, Arc<Project>>> {
        let file: RoutesFile = toml::from_str(text)?;
        let mut by_key = HashMap::new();
        for entry in file.project {
            let project = Arc::new(build_project(entry)?);
            let mut keys = vec![project.name.clone()];
            if project.id != project.name {
                keys.push(project.id.clone());
            }
            for key in keys {
                if by_key.insert(key.clone(), Arc::clone(&project)).is_some() {
                    bail!("project key '{key}' appears twice");
                }
            }
        }
        Ok(by_key)
    }

    fn find(&self, key: &str) -> Option<Arc<Project>> {
        self.by_key
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }
}

fn build_project(entry: ProjectEntry) -> anyhow::Result<Project> {
    if entry.name.is_empty() || entry.name.contains('.') || entry.name.contains('/') {
        bail!(
            "project name '{}' must be non-empty without '.' or '/'",
            entry.name
        );
    }
    let mut roles = HashMap::new();
    for role in entry.role {
        let hash = parse_stored_hash(&role.password_hash).with_context(|| {
            format!(
                "role '{}' of project '{}': password_hash must be '*' and 40 hex digits, as SELECT PASSWORD('...') prints",
                role.name, entry.name
            )
        })?;
        roles.insert(role.name, hash);
    }
    Ok(Project {
        id: entry.id.unwrap_or_else(|| entry.name.clone()),
        name: entry.name,
        backend: entry.backend,
        pooling: entry.pool == PoolMode::Session,
        roles,
    })
}

impl Control for Arc<StaticRoutes> {
    async fn lookup_role(&self, project_key: &str, user: &str) -> Result<RoleLookup, LookupError> {
        let project = self
            .find(project_key)
            .ok_or_else(|| LookupError::UnknownProject(project_key.to_owned()))?;
        Ok(RoleLookup {
            project_id: project.id.clone(),
            project_name: project.name.clone(),
            stored_hash: project.roles.get(user).copied(),
            max_connections: None,
            pooling: project.pooling,
        })
    }

    async fn wake(&self, project_id: &str) -> Result<WakeInfo, WakeError> {
        let project = self
            .find(project_id)
            .ok_or_else(|| WakeError::NoCompute(project_id.to_owned()))?;
        Ok(WakeInfo {
            address: project.backend.clone(),
            compute_id: project.id.clone(),
            cold_start: ColdStart::Warm,
        })
    }

    fn invalidate(&self, _project_id: &str) {}

    fn activity(&self, project_id: &str) -> Arc<ProjectActivity> {
        self.activity.project(project_id)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const FILE: &str = r#"
[[project]]
name = "shop"
id = "p-1"
backend = "127.0.0.1:3306"
[[project.role]]
name = "app"
password_hash = "*6BB4837EB74329105EE4568DDA7DC67ED2CA2AD9"
"#;

    #[tokio::test]
    async fn finds_project_by_name_and_id() {
        let routes = Arc::new(StaticRoutes::parse(FILE).unwrap());
        let by_name = routes.lookup_role("shop", "app").await.unwrap();
        let by_id = routes.lookup_role("p-1", "app").await.unwrap();
        assert_eq!(by_name, by_id);
        assert!(by_name.stored_hash.is_some());
        assert!(
            routes
                .lookup_role("shop", "nobody")
                .await
                .unwrap()
                .stored_hash
                .is_none()
        );
        assert!(matches!(
            routes.lookup_role("nope", "app").await,
            Err(LookupError::UnknownProject(_))
        ));
        assert_eq!(routes.wake("p-1").await.unwrap().address, "127.0.0.1:3306");
    }

    #[tokio::test]
    async fn id_defaults_to_name_and_duplicates_are_refused() {
        let no_id = "[[project]]\nname = 'a'\nbackend = '127.0.0.1:1'\n";
        let routes = Arc::new(StaticRoutes::parse(no_id).unwrap());
        assert_eq!(routes.lookup_role("a", "x").await.unwrap().project_id, "a");
        let twice = format!("{no_id}{no_id}");
        let err = format!("{:#}", StaticRoutes::parse(&twice).err().unwrap());
        assert!(err.contains("appears twice"), "{err}");
    }

    #[test]
    fn rejects_bad_hash_and_unknown_fields() {
        let bad_hash = FILE.replace("*6BB4837EB74329105EE4568DDA7DC67ED2CA2AD9", "secret");
        let err = format!("{:#}", StaticRoutes::parse(&bad_hash).err().unwrap());
        assert!(err.contains("40 hex digits"), "{err}");
        assert!(StaticRoutes::parse("[[project]]\nname='a'\nbackend='x'\nbogus=1").is_err());
        assert!(StaticRoutes::parse("[[project]]\nname='a.b'\nbackend='x'").is_err());
    }
}

//! Which project a connection belongs to, from (in this order) the TLS SNI name, the user name
//! `<project>.<user>` (split at the first dot, TiDB Cloud's convention) or the database
//! `<project>/<database>`. The backend sees the bare user and database.

/// The project a connection names, and what the backend should see.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// A project name or id, as the client wrote it.
    pub project_key: String,
    /// How the project was named: `sni`, `user` or `database` (for logs).
    pub via: &'static str,
    pub user: String,
    pub database: Option<String>,
}

/// Finds the project in what the client sent. `None` when no project is named.
pub fn route(
    sni: Option<&str>,
    sni_suffix: Option<&str>,
    user: &str,
    database: Option<&str>,
) -> Option<Route> {
    if let Some(project) = sni_project(sni, sni_suffix) {
        // With SNI the user may still carry the prefix; strip it when it names the same project.
        let bare_user = match user.split_once('.') {
            Some((p, u)) if p == project => u,
            _ => user,
        };
        let db = database.map(|d| strip_db_prefix(d, project));
        return Some(Route {
            project_key: project.to_owned(),
            via: "sni",
            user: bare_user.to_owned(),
            database: db.map(str::to_owned),
        });
    }
    if let Some((project, bare_user)) = user.split_once('.')
        && !project.is_empty()
        && !bare_user.is_empty()
    {
        let db = database.map(|d| strip_db_prefix(d, project));
        return Some(Route {
            project_key: project.to_owned(),
            via: "user",
            user: bare_user.to_owned(),
            database: db.map(str::to_owned),
        });
    }
    let (project, db) = database?.split_once('/')?;
    if project.is_empty() {
        return None;
    }
    Some(Route {
        project_key: project.to_owned(),
        via: "database",
        user: user.to_owned(),
        database: (!db.is_empty()).then(|| db.to_owned()),
    })
}

/// `<project>` of `<project>.<suffix>` when SNI routing is on and the name matches.
fn sni_project<'a>(sni: Option<&'a str>, suffix: Option<&str>) -> Option<&'a str> {
    let suffix = suffix?.trim_start_matches('.');
    let host = sni?;
    let project = host.strip_suffix(suffix)?.strip_suffix('.')?;
    (!project.is_empty() && !project.contains('.')).then_some(project)
}

/// `db` of `<project>/db` when the prefix names `project`, else the database unchanged.
pub fn strip_db_prefix<'a>(database: &'a str, project: &str) -> &'a str {
    match database.split_once('/') {
        Some((p, db)) if p == project => db,
        _ => database,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(sni: Option<&str>, suffix: Option<&str>, user: &str, db: Option<&str>) -> Option<Route> {
        route(sni, suffix, user, db)
    }

    #[test]
    fn user_prefix_splits_at_first_dot() {
        let got = r(None, None, "shop.app.v2", Some("orders")).expect("routed");
        assert_eq!(got.project_key, "shop");
        assert_eq!(got.user, "app.v2");
        assert_eq!(got.database.as_deref(), Some("orders"));
        assert_eq!(got.via, "user");
    }

    #[test]
    fn database_prefix() {
        let got = r(None, None, "app", Some("shop/orders")).expect("routed");
        assert_eq!(
            (got.project_key.as_str(), got.user.as_str()),
            ("shop", "app")
        );
        assert_eq!(got.database.as_deref(), Some("orders"));
        let no_db = r(None, None, "app", Some("shop/")).expect("routed");
        assert_eq!(no_db.database, None);
    }

    #[test]
    fn sni_wins_and_strips_matching_prefixes() {
        let got = r(
            Some("shop.db.example.com"),
            Some("db.example.com"),
            "shop.app",
            Some("shop/x"),
        )
        .expect("routed");
        assert_eq!(got.project_key, "shop");
        assert_eq!(got.user, "app");
        assert_eq!(got.database.as_deref(), Some("x"));
        assert_eq!(got.via, "sni");
        // SNI for another domain falls back to the user name.
        let other = r(
            Some("shop.other.com"),
            Some("db.example.com"),
            "p2.app",
            None,
        )
        .expect("routed");
        assert_eq!(other.project_key, "p2");
        // Without --sni-suffix SNI is ignored.
        assert_eq!(r(Some("shop.db.example.com"), None, "app", None), None);
    }

    #[test]
    fn nothing_named() {
        assert_eq!(r(None, None, "app", Some("orders")), None);
        assert_eq!(r(None, None, ".app", None), None);
        assert_eq!(r(None, None, "shop.", None), None);
        assert_eq!(r(None, None, "app", Some("/orders")), None);
        assert_eq!(r(None, None, "", None), None);
    }
}

//! Minimal client for doze's admin REST API and its Prometheus metrics (blocking ureq,
//! run on tokio's blocking pool).

use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;

#[derive(Clone)]
pub struct Admin {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl Admin {
    pub fn new(base: &str, token: Option<String>) -> Self {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(180)))
            .http_status_as_error(false)
            .build()
            .into();
        Self {
            base: base.trim_end_matches('/').to_string(),
            token,
            agent,
        }
    }

    pub fn from_common(c: &crate::common::Common) -> Option<Self> {
        c.admin
            .as_deref()
            .map(|a| Self::new(a, c.admin_token.clone()))
    }

    fn call_blocking(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, String)> {
        let url = format!("{}{}", self.base, path);
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let resp = match method {
            "GET" | "DELETE" => {
                let mut r = if method == "GET" {
                    self.agent.get(&url)
                } else {
                    self.agent.delete(&url)
                };
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                r.call()
            }
            _ => {
                let mut r = self.agent.post(&url);
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                match body {
                    Some(b) => r.send_json(b),
                    None => r.send_empty(),
                }
            }
        }
        .with_context(|| format!("{method} {url}"))?;
        let status = resp.status().as_u16();
        let text = resp
            .into_body()
            .read_to_string()
            .with_context(|| format!("{method} {url}: read body"))?;
        Ok((status, text))
    }

    /// Performs a request; non-2xx is an error carrying the response body.
    pub async fn call(
        &self,
        method: &'static str,
        path: String,
        body: Option<Value>,
    ) -> Result<Value> {
        let this = self.clone();
        let p2 = path.clone();
        let (status, text) =
            tokio::task::spawn_blocking(move || this.call_blocking(method, &p2, body.as_ref()))
                .await
                .context("admin request task")??;
        if !(200..300).contains(&status) {
            bail!("{method} {path}: HTTP {status}: {}", text.trim());
        }
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text)
            .with_context(|| format!("{method} {path}: response is not JSON: {text}"))
    }

    /// Like `call` but returns the status without failing on non-2xx.
    pub async fn call_status(
        &self,
        method: &'static str,
        path: String,
        body: Option<Value>,
    ) -> Result<u16> {
        let this = self.clone();
        let (status, _) =
            tokio::task::spawn_blocking(move || this.call_blocking(method, &path, body.as_ref()))
                .await
                .context("admin request task")??;
        Ok(status)
    }

    /// Finds the compute id of a project: from the project JSON if it carries one,
    /// else through wake_compute (which also wakes it).
    pub async fn compute_id(&self, project: &str) -> Result<String> {
        let p = self
            .call("GET", format!("/api/v1/projects/{project}"), None)
            .await?;
        if let Some(id) = compute_id_in(&p) {
            return Ok(id);
        }
        let w = self.wake(project).await?;
        match w.get("compute_id") {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(Value::Number(n)) => Ok(n.to_string()),
            _ => bail!("wake_compute for {project} returned no compute_id: {w}"),
        }
    }

    pub async fn wake(&self, project: &str) -> Result<Value> {
        self.call(
            "GET",
            format!("/api/v1/wake_compute?endpointish={project}"),
            None,
        )
        .await
    }

    /// Suspends a compute by `mode`: `stop` or `freeze`.
    pub async fn suspend(&self, compute_id: &str, mode: &str) -> Result<Value> {
        self.call(
            "POST",
            format!("/api/v1/compute/{compute_id}/suspend?mode={mode}"),
            None,
        )
        .await
    }

    /// Sum of `doze_compute_starts_total` over all label sets.
    pub async fn compute_starts(&self) -> Result<f64> {
        let this = self.clone();
        let (status, text) =
            tokio::task::spawn_blocking(move || this.call_blocking("GET", "/metrics", None))
                .await
                .context("metrics task")??;
        if status != 200 {
            bail!("GET /metrics: HTTP {status}");
        }
        Ok(sum_metric(&text, "doze_compute_starts_total"))
    }
}

fn compute_id_in(p: &Value) -> Option<String> {
    let as_id = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    if let Some(v) = p.get("compute_id").and_then(as_id) {
        return Some(v);
    }
    if let Some(v) = p.get("compute").and_then(|c| c.get("id")).and_then(as_id) {
        return Some(v);
    }
    if let Some(Value::Array(cs)) = p.get("computes")
        && let Some(v) = cs.first().and_then(|c| c.get("id")).and_then(as_id)
    {
        return Some(v);
    }
    None
}

/// Sums a Prometheus counter over its label sets (text exposition format).
pub fn sum_metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            if !(rest.starts_with(' ') || rest.starts_with('{')) {
                return None;
            }
            // The value follows the label set (which may contain spaces inside quotes).
            let after = match rest.rfind('}') {
                Some(i) if rest.starts_with('{') => &rest[i + 1..],
                _ => rest,
            };
            after.split_whitespace().next()?.parse::<f64>().ok()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_sum() {
        let t = "# HELP doze_compute_starts_total x\n# TYPE doze_compute_starts_total counter\n\
                 doze_compute_starts_total{project=\"a b\"} 3\n\
                 doze_compute_starts_total{project=\"c\"} 4 1700000000\n\
                 doze_compute_starts_total_other 100\n";
        assert_eq!(sum_metric(t, "doze_compute_starts_total"), 7.0);
        assert_eq!(
            sum_metric("doze_compute_starts_total 2\n", "doze_compute_starts_total"),
            2.0
        );
        assert_eq!(sum_metric("", "doze_compute_starts_total"), 0.0);
    }

    #[test]
    fn compute_ids() {
        let v: Value = serde_json::json!({"id": "p", "computes": [{"id": "c1"}]});
        assert_eq!(compute_id_in(&v).as_deref(), Some("c1"));
        let v: Value = serde_json::json!({"id": "p", "compute_id": 7});
        assert_eq!(compute_id_in(&v).as_deref(), Some("7"));
        assert_eq!(compute_id_in(&serde_json::json!({"id": "p"})), None);
    }
}

//! The admin commands' output formats: a table for people (the default, as kubectl and neonctl
//! do), and YAML beside JSON for scripts. Both render the admin API's JSON answer as it is, so
//! no field can be shown in one format and missing in another.

use serde_json::Value;

/// Columns shown first when present, in this order; other scalar fields follow. Nested
/// objects (a project's `config`) are left to `-o json|yaml`.
const PREFERRED: &[&str] = &[
    "name",
    "project",
    "id",
    "tenant_id",
    "project_id",
    "start",
    "end",
    "running_seconds",
    "frozen_seconds",
    "connections",
    "bytes_in",
    "bytes_out",
    "state",
    "address",
    "memory_bytes",
    "from_state",
    "to_state",
    "reason",
    "at",
    "actor",
    "method",
    "path",
    "status",
    "created_at",
    "expires_at",
    "revoked_at",
    "updated_at",
    "last_error",
];

/// A list answer (`{"projects": [...]}`, `{"computes": [...]}`, ...) as one row per item;
/// a single object as KEY VALUE lines.
pub fn table(value: &Value) -> String {
    if let Value::Object(map) = value
        && map.len() == 1
        && let Some(Value::Array(items)) = map.values().next()
    {
        return rows(items);
    }
    match value {
        Value::Object(map) => {
            let width = map.keys().map(String::len).max().unwrap_or(0);
            let mut out = String::new();
            for (k, v) in ordered(map) {
                out.push_str(&format!("{:width$}  {}\n", k.to_uppercase(), cell(v)));
            }
            out
        }
        Value::Array(items) => rows(items),
        other => format!("{}\n", cell(other)),
    }
}

fn ordered(map: &serde_json::Map<String, Value>) -> Vec<(&String, &Value)> {
    let mut fields: Vec<(&String, &Value)> = map.iter().collect();
    fields.sort_by_key(|(k, _)| {
        PREFERRED
            .iter()
            .position(|p| p == k)
            .unwrap_or(PREFERRED.len())
    });
    fields
}

fn rows(items: &[Value]) -> String {
    let Some(Value::Object(first)) = items.first() else {
        return if items.is_empty() {
            "(none)\n".to_owned()
        } else {
            items.iter().map(|v| format!("{}\n", cell(v))).collect()
        };
    };
    let columns: Vec<&String> = ordered(first)
        .into_iter()
        .filter(|(_, v)| !v.is_object() && !v.is_array())
        .map(|(k, _)| k)
        .collect();
    let mut grid: Vec<Vec<String>> = vec![columns.iter().map(|c| c.to_uppercase()).collect()];
    for item in items {
        grid.push(
            columns
                .iter()
                .map(|c| item.get(c.as_str()).map(cell).unwrap_or_default())
                .collect(),
        );
    }
    let widths: Vec<usize> = (0..columns.len())
        .map(|i| grid.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in grid {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// One value in a cell: strings bare, null empty, the rest as compact JSON; on one line.
fn cell(v: &Value) -> String {
    let text = match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    text.replace(['\n', '\r'], " ")
}

/// Block-style YAML. Strings are written double-quoted with JSON's escapes, which YAML reads
/// the same way, so no value can be misread (`no`, `1e3`, a leading `*`).
pub fn yaml(value: &Value) -> String {
    let mut out = String::new();
    write_yaml(value, 0, &mut out);
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => serde_json::to_string(s).unwrap_or_default(),
        Value::Object(m) if m.is_empty() => "{}".to_owned(),
        Value::Array(a) if a.is_empty() => "[]".to_owned(),
        other => other.to_string(),
    }
}

fn is_block(v: &Value) -> bool {
    matches!(v, Value::Object(m) if !m.is_empty()) || matches!(v, Value::Array(a) if !a.is_empty())
}

fn write_yaml(value: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                let key = serde_json::to_string(k).unwrap_or_default();
                if is_block(v) {
                    out.push_str(&format!("{pad}{key}:\n"));
                    write_yaml(v, indent + 2, out);
                } else {
                    out.push_str(&format!("{pad}{key}: {}\n", scalar(v)));
                }
            }
        }
        Value::Array(items) if !items.is_empty() => {
            for item in items {
                if is_block(item) {
                    out.push_str(&format!("{pad}-\n"));
                    write_yaml(item, indent + 2, out);
                } else {
                    out.push_str(&format!("{pad}- {}\n", scalar(item)));
                }
            }
        }
        other => out.push_str(&format!("{pad}{}\n", scalar(other))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lists_are_rows_with_the_preferred_columns_first() {
        let t = table(&json!({"projects": [
            {"id": "0b6f", "name": "shop", "config": {"a": 1}, "created_at": "2026-11-27"},
            {"id": "77aa", "name": "a-much-longer-name", "config": {}, "created_at": "2026-11-28"}
        ]}));
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "NAME                ID    CREATED_AT");
        assert_eq!(lines[1], "shop                0b6f  2026-11-27");
        assert_eq!(lines.len(), 3);
        assert_eq!(table(&json!({"roles": []})), "(none)\n");
    }

    #[test]
    fn one_object_is_key_value_lines() {
        let t =
            table(&json!({"state": "frozen", "id": "c1", "address": null, "last_error": "a\nb"}));
        assert_eq!(
            t,
            "ID          c1\nSTATE       frozen\nADDRESS     \nLAST_ERROR  a b\n"
        );
    }

    #[test]
    fn yaml_is_block_style_with_safe_strings() {
        let y = yaml(
            &json!({"name": "no", "config": {"idle_timeout": 300, "tags": ["a", "*b"]}, "e": {}}),
        );
        assert_eq!(
            y,
            "\"config\":\n  \"idle_timeout\": 300\n  \"tags\":\n    - \"a\"\n    - \"*b\"\n\"e\": {}\n\"name\": \"no\"\n"
        );
    }
}

//! `config.mariadb_options`: the server options a project may set on its own compute.
//!
//! An allow-list of exact option names with typed, range-checked values. A deny-list cannot
//! work: MariaDB accepts any unique prefix of an option name (`skip_gr` is
//! `skip_grant_tables`) and the `skip-`, `loose-`, `enable-`, `disable-` and `maximum-`
//! prefixes on top. Here a name is normalised (lower case, `-` as `_`), must equal an entry of
//! [`ALLOWED`], and the entry's full name is what reaches `mariadbd`, so no prefix match can
//! ever happen. Values are checked against the entry's type; strings are never passed through
//! unchecked. Everything is refused at create time with the reason, never discovered at start.

use std::fmt::Write as _;

/// The type and range of an option's value.
#[derive(Clone, Copy, Debug)]
pub enum OptionType {
    /// A whole number.
    Int { min: i64, max: i64 },
    /// A byte count: a number, or digits with a `K`, `M` or `G` suffix (powers of 1024).
    Size { min: u64, max: u64 },
    /// A decimal number (seconds, usually).
    Float { min: f64, max: f64 },
    /// `true`/`false`, `ON`/`OFF` or `1`/`0`.
    Bool,
    /// One of these words (any case).
    Enum(&'static [&'static str]),
    /// A comma-separated list of SQL modes (possibly empty).
    SqlMode,
    /// A character set MariaDB ships.
    Charset,
    /// A collation MariaDB ships.
    Collation,
    /// `SYSTEM` or an offset from UTC such as `+02:00` (named zones need the time zone tables,
    /// which computes do not load).
    TimeZone,
}

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// The options a project may set, sorted by name. Each is a tunable of the project's own
/// server: none names a file, a directory, a plugin, a port, an account or TLS material, and
/// none changes what the data directory is initialised with. Ranges are MariaDB 10.11's
/// (`information_schema.SYSTEM_VARIABLES`), except where a real maximum would let one project
/// exhaust the shared machine: per-session buffers stop at 256 MiB, in-memory temporary
/// tables and the redo log at 1 GiB (InnoDB writes the whole redo log at start).
/// `max_user_connections` starts at 0: MariaDB's -1 locks out every role.
pub const ALLOWED: &[(&str, OptionType)] = &[
    ("character_set_server", OptionType::Charset),
    ("collation_server", OptionType::Collation),
    (
        "connect_timeout",
        OptionType::Int {
            min: 2,
            max: 31_536_000,
        },
    ),
    (
        "default_storage_engine",
        OptionType::Enum(&["InnoDB", "Aria", "MyISAM", "MEMORY"]),
    ),
    ("default_time_zone", OptionType::TimeZone),
    ("default_week_format", OptionType::Int { min: 0, max: 7 }),
    (
        "div_precision_increment",
        OptionType::Int { min: 0, max: 38 },
    ),
    (
        "event_scheduler",
        OptionType::Enum(&["ON", "OFF", "DISABLED"]),
    ),
    ("explicit_defaults_for_timestamp", OptionType::Bool),
    ("ft_min_word_len", OptionType::Int { min: 1, max: 84 }),
    (
        "group_concat_max_len",
        OptionType::Size { min: 4, max: GIB },
    ),
    (
        "innodb_autoinc_lock_mode",
        OptionType::Int { min: 0, max: 2 },
    ),
    (
        "innodb_default_row_format",
        OptionType::Enum(&["redundant", "compact", "dynamic"]),
    ),
    (
        "innodb_flush_log_at_trx_commit",
        OptionType::Int { min: 0, max: 3 },
    ),
    (
        "innodb_ft_min_token_size",
        OptionType::Int { min: 1, max: 16 },
    ),
    (
        "innodb_lock_wait_timeout",
        OptionType::Int {
            min: 0,
            max: 100_000_000,
        },
    ),
    (
        "innodb_log_file_size",
        OptionType::Size {
            min: 4 * MIB,
            max: GIB,
        },
    ),
    ("innodb_strict_mode", OptionType::Bool),
    (
        "interactive_timeout",
        OptionType::Int {
            min: 1,
            max: 31_536_000,
        },
    ),
    (
        "join_buffer_size",
        OptionType::Size {
            min: 128,
            max: 256 * MIB,
        },
    ),
    (
        "lock_wait_timeout",
        OptionType::Int {
            min: 0,
            max: 31_536_000,
        },
    ),
    (
        "long_query_time",
        OptionType::Float {
            min: 0.0,
            max: 31_536_000.0,
        },
    ),
    (
        "max_allowed_packet",
        OptionType::Size { min: KIB, max: GIB },
    ),
    (
        "max_connect_errors",
        OptionType::Int {
            min: 1,
            max: 4_294_967_295,
        },
    ),
    (
        "max_connections",
        OptionType::Int {
            min: 10,
            max: 100_000,
        },
    ),
    (
        "max_heap_table_size",
        OptionType::Size {
            min: 16 * KIB,
            max: GIB,
        },
    ),
    (
        "max_sp_recursion_depth",
        OptionType::Int { min: 0, max: 255 },
    ),
    (
        "max_statement_time",
        OptionType::Float {
            min: 0.0,
            max: 31_536_000.0,
        },
    ),
    (
        "max_user_connections",
        OptionType::Int {
            min: 0,
            max: 2_147_483_647,
        },
    ),
    (
        "net_read_timeout",
        OptionType::Int {
            min: 1,
            max: 31_536_000,
        },
    ),
    (
        "net_write_timeout",
        OptionType::Int {
            min: 1,
            max: 31_536_000,
        },
    ),
    (
        "read_buffer_size",
        OptionType::Size {
            min: 8 * KIB,
            max: 256 * MIB,
        },
    ),
    (
        "sort_buffer_size",
        OptionType::Size {
            min: KIB,
            max: 256 * MIB,
        },
    ),
    ("sql_mode", OptionType::SqlMode),
    (
        "table_definition_cache",
        OptionType::Int {
            min: 400,
            max: 2_097_152,
        },
    ),
    (
        "table_open_cache",
        OptionType::Int {
            min: 10,
            max: 1_048_576,
        },
    ),
    (
        "thread_cache_size",
        OptionType::Int {
            min: 0,
            max: 16_384,
        },
    ),
    ("tmp_table_size", OptionType::Size { min: 0, max: GIB }),
    (
        "transaction_isolation",
        OptionType::Enum(&[
            "READ-UNCOMMITTED",
            "READ-COMMITTED",
            "REPEATABLE-READ",
            "SERIALIZABLE",
        ]),
    ),
    (
        "wait_timeout",
        OptionType::Int {
            min: 1,
            max: 31_536_000,
        },
    ),
];

/// Every collation of MariaDB 10.11 with its character set, one `name charset` per line
/// (`information_schema.COLLATION_CHARACTER_SET_APPLICABILITY`): an unknown collation stops
/// the server at start, and a prefix check lets `utf8mb4_nonsense` through.
const COLLATIONS: &str = include_str!("collations.txt");

/// SQL modes of MariaDB 10.6+ (and the combination modes).
const SQL_MODES: &[&str] = &[
    "ALLOW_INVALID_DATES",
    "ANSI",
    "ANSI_QUOTES",
    "DB2",
    "EMPTY_STRING_IS_NULL",
    "ERROR_FOR_DIVISION_BY_ZERO",
    "HIGH_NOT_PRECEDENCE",
    "IGNORE_BAD_TABLE_OPTIONS",
    "IGNORE_SPACE",
    "MAXDB",
    "MSSQL",
    "MYSQL323",
    "MYSQL40",
    "NO_AUTO_CREATE_USER",
    "NO_AUTO_VALUE_ON_ZERO",
    "NO_BACKSLASH_ESCAPES",
    "NO_DIR_IN_CREATE",
    "NO_ENGINE_SUBSTITUTION",
    "NO_FIELD_OPTIONS",
    "NO_KEY_OPTIONS",
    "NO_TABLE_OPTIONS",
    "NO_UNSIGNED_SUBTRACTION",
    "NO_ZERO_DATE",
    "NO_ZERO_IN_DATE",
    "ONLY_FULL_GROUP_BY",
    "ORACLE",
    "PAD_CHAR_TO_FULL_LENGTH",
    "PIPES_AS_CONCAT",
    "POSTGRESQL",
    "REAL_AS_FLOAT",
    "SIMULTANEOUS_ASSIGNMENT",
    "STRICT_ALL_TABLES",
    "STRICT_TRANS_TABLES",
    "TIME_ROUND_FRACTIONAL",
    "TRADITIONAL",
];

/// Character sets a server may default to (a name MariaDB does not know stops the server at
/// start). ucs2, utf16, utf16le and utf32 are left out: MariaDB cannot use them as a client
/// character set and falls back to latin1.
const CHARSETS: &[&str] = &[
    "armscii8", "ascii", "big5", "binary", "cp1250", "cp1251", "cp1256", "cp1257", "cp850",
    "cp852", "cp866", "cp932", "dec8", "eucjpms", "euckr", "gb2312", "gbk", "geostd8", "greek",
    "hebrew", "hp8", "keybcs2", "koi8r", "koi8u", "latin1", "latin2", "latin5", "latin7", "macce",
    "macroman", "sjis", "swe7", "tis620", "ujis", "utf8", "utf8mb3", "utf8mb4",
];

/// The character sets [`ALLOWED`] accepts for `character_set_server` (tests start a server
/// with each).
pub fn charsets() -> &'static [&'static str] {
    CHARSETS
}

/// The collations of `charset` that `collation_server` accepts.
pub fn collations_of(charset: &str) -> Vec<&'static str> {
    COLLATIONS
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(_, of)| *of == charset)
        .map(|(name, _)| name)
        .collect()
}

/// The SQL modes `sql_mode` accepts.
pub fn sql_modes() -> &'static [&'static str] {
    SQL_MODES
}

/// Longest string value accepted (an SQL mode list is the longest legitimate one).
const MAX_VALUE_LEN: usize = 512;

/// Server arguments (`--option-name=value`) for `config.mariadb_options`, or a message saying
/// what is wrong and what is allowed.
pub fn server_args(config: &serde_json::Value) -> Result<Vec<String>, String> {
    let Some(opts) = config.get("mariadb_options") else {
        return Ok(Vec::new());
    };
    if opts.is_null() {
        return Ok(Vec::new());
    }
    let Some(map) = opts.as_object() else {
        return Err("mariadb_options must be an object of option names to values".into());
    };
    let mut args = Vec::with_capacity(map.len() + 1);
    let mut charset = None;
    let mut collation_charset = None;
    for (key, value) in map {
        let (name, kind) = lookup(key)?;
        let value = check_value(name, kind, value)?;
        match kind {
            OptionType::Charset => charset = Some(canonical_charset(&value).to_owned()),
            OptionType::Collation => collation_charset = charset_of(&value).map(str::to_owned),
            _ => {}
        }
        args.push(format!("--{}={value}", name.replace('_', "-")));
    }
    match (charset, collation_charset) {
        (Some(cs), Some(of)) if cs != of => {
            return Err(format!(
                "mariadb_options: collation_server belongs to the character set {of}, but \
                 character_set_server is {cs}; give a matching pair"
            ));
        }
        // A collation alone is only valid with the server's default character set (latin1):
        // set its own character set with it.
        (None, Some(of)) => args.push(format!("--character-set-server={of}")),
        _ => {}
    }
    Ok(args)
}

/// `utf8` is MariaDB's alias of `utf8mb3`.
fn canonical_charset(charset: &str) -> &str {
    if charset == "utf8" {
        "utf8mb3"
    } else {
        charset
    }
}

/// The character set of a collation MariaDB ships.
fn charset_of(collation: &str) -> Option<&'static str> {
    let name = match collation.strip_prefix("utf8_") {
        Some(rest) => format!("utf8mb3_{rest}"),
        None => collation.to_owned(),
    };
    COLLATIONS.lines().find_map(|line| {
        let (c, charset) = line.split_once(' ')?;
        (c == name).then_some(charset.trim())
    })
}

/// The allowed option a key names, exactly (after normalising case and `-`).
fn lookup(key: &str) -> Result<(&'static str, OptionType), String> {
    let normal = key.trim().to_ascii_lowercase().replace('-', "_");
    ALLOWED
        .iter()
        .find(|(name, _)| *name == normal)
        .copied()
        .ok_or_else(|| {
            let shown: String = key.chars().take(64).collect();
            format!(
                "mariadb_options: {shown:?} is not an option a project may set. Allowed: {}",
                allowed_names()
            )
        })
}

fn allowed_names() -> String {
    let mut out = String::new();
    for (i, (name, _)) in ALLOWED.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(name);
    }
    out
}

fn check_value(name: &str, kind: OptionType, value: &serde_json::Value) -> Result<String, String> {
    let text = match value {
        serde_json::Value::String(s) => s.trim().to_owned(),
        serde_json::Value::Number(n) => n.to_string(),
        serde_json::Value::Bool(b) => if *b { "ON" } else { "OFF" }.to_owned(),
        other => {
            return Err(format!(
                "mariadb_options.{name}: expected a string, number or boolean, got {other}"
            ));
        }
    };
    if text.len() > MAX_VALUE_LEN {
        return Err(format!("mariadb_options.{name}: the value is too long"));
    }
    let bad = |expected: String| format!("mariadb_options.{name}: {text:?} is not {expected}");
    match kind {
        OptionType::Int { min, max } => match text.parse::<i64>() {
            Ok(v) if (min..=max).contains(&v) => Ok(v.to_string()),
            _ => Err(bad(format!("a whole number from {min} to {max}"))),
        },
        OptionType::Size { min, max } => match parse_size(&text) {
            Some(v) if (min..=max).contains(&v) => Ok(v.to_string()),
            _ => Err(bad(format!(
                "a size from {min} to {max} bytes (a number, or e.g. 64M, 1G)"
            ))),
        },
        OptionType::Float { min, max } => match text.parse::<f64>() {
            Ok(v) if v.is_finite() && (min..=max).contains(&v) => Ok(v.to_string()),
            _ => Err(bad(format!("a number from {min} to {max}"))),
        },
        OptionType::Bool => match text.to_ascii_uppercase().as_str() {
            "ON" | "TRUE" | "1" => Ok("ON".into()),
            "OFF" | "FALSE" | "0" => Ok("OFF".into()),
            _ => Err(bad("ON or OFF".into())),
        },
        OptionType::Enum(words) => words
            .iter()
            .find(|w| w.eq_ignore_ascii_case(&text))
            .map(|w| (*w).to_owned())
            .ok_or_else(|| bad(format!("one of {}", words.join(", ")))),
        OptionType::SqlMode => sql_mode(&text).ok_or_else(|| {
            bad("a comma-separated list of SQL modes (e.g. STRICT_TRANS_TABLES,ANSI_QUOTES)".into())
        }),
        OptionType::Charset => {
            let lower = text.to_ascii_lowercase();
            CHARSETS
                .contains(&lower.as_str())
                .then_some(lower)
                .ok_or_else(|| bad(format!("a character set ({})", CHARSETS.join(", "))))
        }
        OptionType::Collation => {
            collation(&text).ok_or_else(|| bad("a collation such as utf8mb4_unicode_ci".into()))
        }
        OptionType::TimeZone => time_zone(&text)
            .ok_or_else(|| bad("SYSTEM or an offset from UTC such as +02:00".into())),
    }
}

/// Bytes of `64M`-style sizes (K, M, G: powers of 1024, as MariaDB reads them).
fn parse_size(text: &str) -> Option<u64> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let mult: u64 = match unit {
        "" => 1,
        "K" | "k" => 1 << 10,
        "M" | "m" => 1 << 20,
        "G" | "g" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

fn sql_mode(text: &str) -> Option<String> {
    let mut out = String::new();
    for (i, mode) in text.split(',').map(str::trim).enumerate() {
        if text.trim().is_empty() {
            break;
        }
        let mode = mode.to_ascii_uppercase();
        if !SQL_MODES.contains(&mode.as_str()) {
            return None;
        }
        if i > 0 {
            out.push(',');
        }
        out.push_str(&mode);
    }
    Some(out)
}

/// A collation MariaDB ships, of a character set a server may default to.
fn collation(text: &str) -> Option<String> {
    let lower = text.to_ascii_lowercase();
    let charset = charset_of(&lower)?;
    CHARSETS.contains(&charset).then_some(lower)
}

fn time_zone(text: &str) -> Option<String> {
    if text.eq_ignore_ascii_case("SYSTEM") {
        return Some("SYSTEM".into());
    }
    let (sign, rest) = text.split_at_checked(1)?;
    if sign != "+" && sign != "-" {
        return None;
    }
    let (h, m) = rest.split_once(':')?;
    if h.is_empty()
        || h.len() > 2
        || m.len() != 2
        || !(h.chars().chain(m.chars())).all(|c| c.is_ascii_digit())
    {
        return None;
    }
    let (hours, minutes): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    // MariaDB accepts -12:59 ..= +13:00 and refuses to start outside.
    let total = hours * 60 + minutes;
    let fits = if sign == "+" {
        total <= 13 * 60
    } else {
        total <= 12 * 60 + 59
    };
    if minutes > 59 || !fits {
        return None;
    }
    let mut out = String::new();
    let _ = write!(out, "{sign}{hours:02}:{minutes:02}");
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn args(options: serde_json::Value) -> Result<Vec<String>, String> {
        server_args(&json!({ "mariadb_options": options }))
    }

    /// Options that would let a project escape its compute (files, plugins, accounts,
    /// networking, logs elsewhere), each of which the issue reproduced or is of the same kind.
    const DENIED: &[&str] = &[
        "skip_grant_tables",
        "log_bin",
        "log_bin_index",
        "datadir",
        "tmpdir",
        "log_error",
        "basedir",
        "socket",
        "skip_networking",
        "ssl_key",
        "ssl_cert",
        "symbolic_links",
        "plugin_dir",
        "plugin_load",
        "plugin_load_add",
        "init_file",
        "init_connect",
        "secure_file_priv",
        "general_log",
        "general_log_file",
        "slow_query_log_file",
        "user",
        "port",
        "bind_address",
        "pid_file",
        "local_infile",
        "lower_case_table_names",
        "innodb_data_home_dir",
        "innodb_log_group_home_dir",
        "innodb_undo_directory",
        "character_sets_dir",
        "defaults_file",
        "chroot",
        "proxy_protocol_networks",
        "innodb_buffer_pool_size",
        "performance_schema",
    ];

    #[test]
    fn every_prefix_of_every_denied_option_is_refused() {
        for name in DENIED {
            for end in 1..=name.len() {
                let prefix = &name[..end];
                for spelling in [
                    prefix.to_owned(),
                    prefix.replace('_', "-"),
                    prefix.to_ascii_uppercase(),
                    format!("skip_{prefix}"),
                    format!("loose_{prefix}"),
                    format!("enable-{prefix}"),
                ] {
                    // A prefix of a denied name may happen to be an allowed name in full
                    // (none is today); only exact allowed names may pass.
                    if ALLOWED
                        .iter()
                        .any(|(a, _)| *a == spelling.to_ascii_lowercase().replace('-', "_"))
                    {
                        continue;
                    }
                    assert!(
                        args(json!({ spelling.clone(): "ON" })).is_err(),
                        "{spelling} was accepted"
                    );
                }
            }
        }
    }

    #[test]
    fn no_allowed_name_is_a_prefix_of_a_denied_one() {
        for (allowed, _) in ALLOWED {
            for denied in DENIED {
                assert!(!denied.starts_with(allowed), "{allowed} prefixes {denied}");
            }
        }
    }

    #[test]
    fn allowed_options_pass_with_their_full_names() {
        let got = args(json!({
            "max-connections": 2000,
            "SQL_MODE": "ansi_quotes, strict_trans_tables",
            "innodb_strict_mode": false,
            "max_allowed_packet": "256M",
            "collation_server": "utf8mb4_unicode_ci",
            "character_set_server": "UTF8MB4",
            "default_time_zone": "+2:00",
            "long_query_time": 0.5,
            "transaction_isolation": "read-committed",
        }))
        .expect("valid");
        let mut got = got;
        got.sort();
        assert_eq!(
            got,
            vec![
                "--character-set-server=utf8mb4",
                "--collation-server=utf8mb4_unicode_ci",
                "--default-time-zone=+02:00",
                "--innodb-strict-mode=OFF",
                "--long-query-time=0.5",
                "--max-allowed-packet=268435456",
                "--max-connections=2000",
                "--sql-mode=ANSI_QUOTES,STRICT_TRANS_TABLES",
                "--transaction-isolation=READ-COMMITTED",
            ]
        );
        assert_eq!(
            args(json!({"sql_mode": ""})).expect("empty mode"),
            vec!["--sql-mode="]
        );
        assert_eq!(
            args(serde_json::Value::Null).expect("null"),
            Vec::<String>::new()
        );
        assert_eq!(
            args(json!({"collation_server": "utf8mb4_uca1400_ai_ci"})).expect("collation alone"),
            vec![
                "--collation-server=utf8mb4_uca1400_ai_ci",
                "--character-set-server=utf8mb4"
            ]
        );
        for zone in ["+13:00", "-12:59", "SYSTEM", "-00:30"] {
            assert!(args(json!({"default_time_zone": zone})).is_ok(), "{zone}");
        }
    }

    #[test]
    fn bad_values_are_refused_with_the_reason() {
        for (options, says) in [
            (json!({"max_connections": 0}), "from 10 to 100000"),
            (json!({"max_connections": "lots"}), "whole number"),
            (json!({"max_connections": [1]}), "expected a string"),
            (json!({"sql_mode": "ANSI,NOPE"}), "SQL modes"),
            (
                json!({"sql_mode": "ANSI\n--skip-grant-tables"}),
                "SQL modes",
            ),
            (json!({"character_set_server": "klingon"}), "character set"),
            (json!({"collation_server": "utf8mb4_ci'; --x"}), "collation"),
            (json!({"collation_server": "utf8mb4_nonsense"}), "collation"),
            (
                json!({"collation_server": "latin1_bin", "character_set_server": "utf8mb4"}),
                "matching pair",
            ),
            (json!({"default_time_zone": "+13:01"}), "offset"),
            (json!({"default_time_zone": "-13:00"}), "offset"),
            (json!({"default_time_zone": "+0100"}), "offset"),
            (json!({"transaction_isolation": "READ_COMMITTED"}), "one of"),
            (json!({"innodb_log_file_size": "200G"}), "size"),
            (json!({"max_user_connections": -1}), "whole number"),
            (json!({"sql_mode": "ALL"}), "SQL modes"),
            (json!({"default_time_zone": "Europe/Paris"}), "offset"),
            (json!({"max_allowed_packet": "2G"}), "size"),
            (json!({"max_allowed_packet": "4MB"}), "size"),
            (json!({"long_query_time": -1}), "number from"),
            (json!({"innodb_strict_mode": "maybe"}), "ON or OFF"),
            (json!({"event_scheduler": "sometimes"}), "one of"),
        ] {
            let err = args(options.clone()).expect_err(&options.to_string());
            assert!(err.contains(says), "{options}: {err}");
        }
        let err = args(json!({"skip_gr": "ON"})).expect_err("prefix");
        assert!(err.contains("Allowed: character_set_server"), "{err}");
        assert!(server_args(&json!({"mariadb_options": 3})).is_err());
    }
}

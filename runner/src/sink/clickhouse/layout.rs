//! Which guarantee a ClickHouse table gives against a replayed epoch, decided
//! from what the server says about the table at `open`, and the statements
//! that create a table that gives one.
//!
//! - Deduplication tokens: from 22.2 on, each block carries
//!   `insert_deduplication_token`, and a MergeTree-family table drops a block
//!   whose token is among its last `window` blocks, when it has a window:
//!   `Replicated*` (and `Shared*`) tables through
//!   `replicated_deduplication_window` (on by default), other MergeTree
//!   tables only through `non_replicated_deduplication_window` (0, off, by
//!   default).
//! - A `ReplacingMergeTree` whose sorting key is exactly the row identity:
//!   a replayed row has the same key as the one it repeats, and the two
//!   collapse into one (at merges; `SELECT ... FINAL` shows it at once).
//!   Works on every version.
//!
//! Anything else (a plain MergeTree without a window, a Log table, a
//! ReplacingMergeTree keyed by something else) keeps every replayed or
//! retried block twice, so the sink refuses it.

use std::collections::BTreeSet;

use arrow::datatypes::{DataType, Schema};

/// First version with `insert_deduplication_token`.
pub const DEDUPLICATION_TOKEN_SINCE: (u32, u32) = (22, 2);

/// The window the sink suggests for `non_replicated_deduplication_window`:
/// it must hold every block of one epoch of every writer of the table.
const SUGGESTED_WINDOW: u64 = 1000;

/// How a table leaves a replayed epoch's rows once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Guarantee {
    /// Blocks carry deduplication tokens; the table remembers the last
    /// `window` of them.
    Tokens { window: u64 },
    /// A ReplacingMergeTree keyed by the row identity collapses replays.
    ReplacingOnIdentity,
}

/// What the server says about the table.
#[derive(Clone, Debug, Default)]
pub struct TableFacts {
    /// `SELECT version()`, parsed as (major, minor).
    pub version: Option<(u32, u32)>,
    /// `system.tables.engine`, e.g. `ReplicatedReplacingMergeTree`.
    pub engine: String,
    /// `system.tables.sorting_key`: the `ORDER BY` expressions.
    pub sorting_key: String,
    /// The deduplication window that applies to the table's kind
    /// ([`window_setting`]): its own setting, else the server's default.
    pub deduplication_window: u64,
    /// The table's columns.
    pub columns: Vec<String>,
}

/// "major.minor…" → (major, minor).
pub fn parse_version(text: &str) -> Option<(u32, u32)> {
    let mut parts = text.trim().split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

fn replicated(engine: &str) -> bool {
    engine.starts_with("Replicated") || engine.starts_with("Shared")
}

/// The MergeTree setting that sets how many recent block tokens (or
/// hashes) a table of `engine` remembers.
pub fn window_setting(engine: &str) -> &'static str {
    if replicated(engine) {
        "replicated_deduplication_window"
    } else {
        "non_replicated_deduplication_window"
    }
}

/// The value of setting `name` in an `engine_full` text
/// (`... SETTINGS a = 1, b = 'x'`), when it is a number.
pub fn setting_in(engine_full: &str, name: &str) -> Option<u64> {
    let (_, settings) = engine_full.rsplit_once(" SETTINGS ")?;
    settings.split(", ").find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key.trim() == name)
            .then(|| value.trim().trim_matches('\'').parse().ok())
            .flatten()
    })
}

/// The table columns that the sorting key expressions refer to (function
/// names and string literals are not columns).
fn key_columns(sorting_key: &str, columns: &[String]) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut chars = sorting_key.chars().peekable();
    while let Some(c) = chars.next() {
        let word = match c {
            '\'' => {
                let mut escaped = false;
                for c in chars.by_ref() {
                    match (escaped, c) {
                        (false, '\\') => escaped = true,
                        (false, '\'') => break,
                        _ => escaped = false,
                    }
                }
                continue;
            }
            '`' | '"' => chars.by_ref().take_while(|&q| q != c).collect::<String>(),
            c if c.is_alphabetic() || c == '_' => {
                let mut word = String::from(c);
                while let Some(&next) = chars.peek() {
                    if !(next.is_alphanumeric() || next == '_' || next == '.') {
                        break;
                    }
                    word.push(next);
                    chars.next();
                }
                word
            }
            _ => continue,
        };
        let is_call = chars.peek() == Some(&'(');
        if !is_call && columns.contains(&word) {
            found.insert(word);
        }
    }
    found
}

/// The guarantee the table gives against replays, or why it gives none.
pub fn decide(facts: &TableFacts, identity: &[&str]) -> Result<Guarantee, String> {
    let engine = facts.engine.as_str();
    let merge_tree = engine.ends_with("MergeTree");
    let tokens = facts
        .version
        .is_some_and(|version| version >= DEDUPLICATION_TOKEN_SINCE);
    if tokens && merge_tree && facts.deduplication_window > 0 {
        return Ok(Guarantee::Tokens {
            window: facts.deduplication_window,
        });
    }
    let wanted: BTreeSet<String> = identity.iter().map(|&name| name.to_owned()).collect();
    let keyed = key_columns(&facts.sorting_key, &facts.columns);
    if engine.contains("ReplacingMergeTree") && keyed == wanted {
        return Ok(Guarantee::ReplacingOnIdentity);
    }
    let tokens_reason = if !tokens {
        "this server predates deduplication tokens (22.2)".to_owned()
    } else if merge_tree {
        format!(
            "its {} is 0, so it ignores deduplication tokens",
            window_setting(engine)
        )
    } else {
        "only MergeTree-family tables deduplicate inserts".to_owned()
    };
    let key_reason = if !engine.contains("ReplacingMergeTree") {
        format!("it is a {engine}, not a ReplacingMergeTree")
    } else {
        format!(
            "its sorting key ({}) is not the row identity ({})",
            facts.sorting_key,
            identity.join(", ")
        )
    };
    Err(format!("{tokens_reason}, and {key_reason}"))
}

/// The ClickHouse type for a column of the sink's rows (timestamps are sent
/// as Unix seconds).
fn column_type(data_type: &DataType) -> &'static str {
    match data_type {
        DataType::Timestamp(..) => "DateTime",
        DataType::Int32 => "Int32",
        DataType::Int64 => "Int64",
        DataType::UInt64 => "UInt64",
        DataType::Float64 => "Float64",
        DataType::Boolean => "UInt8",
        _ => "String",
    }
}

/// `CREATE TABLE` statements for rows of `schema` that make replays
/// harmless: a ReplacingMergeTree keyed by the row identity (any version),
/// and a MergeTree that honours deduplication tokens (22.2 and later).
pub fn create_statements(
    table: &str,
    schema: &Schema,
    identity: &[usize],
    quote: impl Fn(&str) -> String,
) -> String {
    let columns: Vec<String> = schema
        .fields()
        .iter()
        .map(|field| {
            let base = column_type(field.data_type());
            let ty = if field.is_nullable() {
                format!("Nullable({base})")
            } else {
                base.to_owned()
            };
            format!("{} {ty}", quote(field.name()))
        })
        .collect();
    // Nullable columns are not allowed in a sorting key as such; their
    // null flag and value are.
    let key: Vec<String> = identity
        .iter()
        .map(|&index| {
            let field = schema.field(index);
            let name = quote(field.name());
            if field.is_nullable() {
                let empty = if column_type(field.data_type()) == "String" {
                    "''"
                } else {
                    "0"
                };
                format!("isNull({name}), ifNull({name}, {empty})")
            } else {
                name
            }
        })
        .collect();
    let head = format!("CREATE TABLE {table} ({})", columns.join(", "));
    let key = key.join(", ");
    format!(
        "{head} ENGINE = ReplacingMergeTree ORDER BY ({key})   -- any version; read it with FINAL\n  \
         or: {head} ENGINE = MergeTree ORDER BY ({key}) SETTINGS non_replicated_deduplication_window = {SUGGESTED_WINDOW}   -- 22.2 and later (a Replicated*MergeTree needs no setting)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(version: (u32, u32), engine: &str, key: &str, window: u64) -> TableFacts {
        TableFacts {
            version: Some(version),
            engine: engine.into(),
            sorting_key: key.into(),
            deduplication_window: window,
            columns: ["stream", "partition", "offset", "event_time", "event"]
                .map(String::from)
                .to_vec(),
        }
    }

    const IDENTITY: [&str; 3] = ["stream", "partition", "offset"];

    #[test]
    fn tokens_need_a_version_that_has_them_and_a_window() {
        let current = facts((26, 9), "MergeTree", "event_time", 100);
        assert_eq!(
            decide(&current, &IDENTITY),
            Ok(Guarantee::Tokens { window: 100 })
        );
        let old = facts((18, 16), "ReplicatedMergeTree", "event_time", 100);
        assert!(decide(&old, &IDENTITY).unwrap_err().contains("predates"));
        let no_window = facts((24, 8), "MergeTree", "event_time", 0);
        let reason = decide(&no_window, &IDENTITY).unwrap_err();
        assert!(
            reason.contains("non_replicated_deduplication_window is 0"),
            "{reason}"
        );
        assert_eq!(
            window_setting("ReplicatedMergeTree"),
            "replicated_deduplication_window"
        );
    }

    #[test]
    fn replacing_tables_must_be_keyed_by_exactly_the_row_identity() {
        let keyed = facts(
            (18, 16),
            "ReplacingMergeTree",
            "stream, partition, `offset`",
            0,
        );
        assert_eq!(
            decide(&keyed, &IDENTITY),
            Ok(Guarantee::ReplacingOnIdentity)
        );
        let by_time = facts((18, 16), "ReplacingMergeTree", "stream, event_time", 0);
        assert!(
            decide(&by_time, &IDENTITY)
                .unwrap_err()
                .contains("not the row identity")
        );
        let wider = facts(
            (18, 16),
            "ReplacingMergeTree",
            "stream, partition, offset, event_time",
            0,
        );
        assert!(decide(&wider, &IDENTITY).is_err());
    }

    #[test]
    fn key_columns_skip_functions_and_literals() {
        let columns = ["window_start", "event_type", "ifNull"]
            .map(String::from)
            .to_vec();
        assert_eq!(
            key_columns(
                "window_start, isNull(event_type), ifNull(event_type, 'window_end')",
                &columns
            ),
            ["event_type", "window_start"].map(String::from).into()
        );
    }

    #[test]
    fn settings_are_read_from_the_engine_text() {
        let text = "MergeTree ORDER BY a SETTINGS non_replicated_deduplication_window = 100, index_granularity = 8192";
        assert_eq!(
            setting_in(text, "non_replicated_deduplication_window"),
            Some(100)
        );
        assert_eq!(setting_in(text, "replicated_deduplication_window"), None);
        assert_eq!(
            setting_in("MergeTree ORDER BY a", "index_granularity"),
            None
        );
    }

    #[test]
    fn versions_are_parsed() {
        assert!(parse_version("18.16.1\n").is_some_and(|v| v < DEDUPLICATION_TOKEN_SINCE));
        assert!(parse_version("22.2.2.1").is_some_and(|v| v >= DEDUPLICATION_TOKEN_SINCE));
        assert_eq!(parse_version("nonsense"), None);
    }
}

//! A parser for the INI dialect of Go's `goconf`, which the Go signaling
//! server uses for `server.conf`. Existing INI crates disagree with goconf on
//! `rem` comments, continuation lines, inline comments and interpolation, so
//! an admin's file would silently change meaning; this parser follows goconf.

use std::collections::HashMap;

/// Options of one file, by lower-cased section and option name.
#[derive(Debug, Default, Clone)]
pub struct IniFile {
    sections: HashMap<String, HashMap<String, String>>,
}

/// The section that holds options written before any `[section]` header.
pub const DEFAULT_SECTION: &str = "default";

/// Most work (references expanded plus bytes produced) one [`IniFile::get`]
/// spends on `%(name)s` interpolation.
pub const MAX_INTERPOLATION_WORK: usize = 64 * 1024;

fn is_comment(line: &str) -> bool {
    if line.starts_with('#') || line.starts_with(';') {
        return true;
    }
    let lower = line.get(..3).map(|s| s.to_ascii_lowercase());
    lower.as_deref() == Some("rem")
        && line[3..]
            .chars()
            .next()
            .is_none_or(|c| c == ' ' || c == '\t')
}

/// Strips an inline comment, which goconf only recognises after a space or tab.
fn strip_inline_comment(value: &str) -> &str {
    let bytes = value.as_bytes();
    for i in 1..bytes.len() {
        if (bytes[i] == b'#' || bytes[i] == b';') && (bytes[i - 1] == b' ' || bytes[i - 1] == b'\t')
        {
            return &value[..i - 1];
        }
    }
    value
}

impl IniFile {
    /// Parses the text of a goconf file. Lines goconf would reject are errors
    /// naming the line number.
    pub fn parse(text: &str) -> Result<IniFile, String> {
        let mut file = IniFile::default();
        let mut section = DEFAULT_SECTION.to_string();
        let mut last_key: Option<String> = None;
        for (n, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || is_comment(line) {
                continue;
            }
            if line.starts_with('[') {
                let Some(end) = line.find(']') else {
                    return Err(format!("line {}: unterminated section header", n + 1));
                };
                section = line[1..end].trim().to_ascii_lowercase();
                file.sections.entry(section.clone()).or_default();
                last_key = None;
                continue;
            }
            match line.find(['=', ':']) {
                Some(pos) => {
                    let key = line[..pos].trim().to_ascii_lowercase();
                    let value = strip_inline_comment(line[pos + 1..].trim()).trim();
                    file.sections
                        .entry(section.clone())
                        .or_default()
                        .insert(key.clone(), value.to_string());
                    last_key = Some(key);
                }
                None => {
                    // goconf: a line without separator continues the previous value.
                    let Some(key) = &last_key else {
                        return Err(format!("line {}: expected `key = value`", n + 1));
                    };
                    let entry = file
                        .sections
                        .get_mut(&section)
                        .and_then(|s| s.get_mut(key))
                        .expect("last key exists in current section");
                    entry.push('\n');
                    entry.push_str(strip_inline_comment(line).trim());
                }
            }
        }
        Ok(file)
    }

    /// Names of all sections present in the file.
    pub fn sections(&self) -> impl Iterator<Item = &str> {
        self.sections.keys().map(String::as_str)
    }

    /// The options of `section` as written (key, raw value), in no order.
    pub fn options<'a>(&'a self, section: &str) -> impl Iterator<Item = (&'a str, &'a str)> {
        self.sections
            .get(&section.to_ascii_lowercase())
            .into_iter()
            .flat_map(|s| s.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    }

    /// The value as written in `section` (after comment stripping and
    /// continuation lines), without interpolation or `[default]` fallback.
    pub fn get_raw(&self, section: &str, key: &str) -> Option<&str> {
        self.sections
            .get(&section.to_ascii_lowercase())?
            .get(&key.to_ascii_lowercase())
            .map(String::as_str)
    }

    /// The raw value, with `%(name)s` references expanded from the same
    /// section or `[default]`.
    pub fn get(&self, section: &str, key: &str) -> Option<String> {
        let section = section.to_ascii_lowercase();
        let key = key.to_ascii_lowercase();
        let value = self
            .sections
            .get(&section)
            .and_then(|s| s.get(&key))
            .or_else(|| self.sections.get(DEFAULT_SECTION).and_then(|s| s.get(&key)))?;
        let mut budget = MAX_INTERPOLATION_WORK;
        Some(self.interpolate(&section, value, 0, &mut budget))
    }

    /// Expands references in `value`. `budget` bounds the work of one
    /// `get`: references multiply (`a = %(b)s%(b)s`, `b = %(c)s%(c)s`, ...),
    /// so depth alone would allow exponential time and memory. Each expanded
    /// reference costs 1 plus the bytes it adds; once spent, the remaining
    /// references stay as written, as do references nested too deeply.
    fn interpolate(&self, section: &str, value: &str, depth: usize, budget: &mut usize) -> String {
        if depth > 16 || *budget == 0 || !value.contains("%(") {
            return value.to_string();
        }
        let mut out = String::with_capacity(value.len());
        let mut rest = value;
        while let Some(start) = rest.find("%(") {
            if *budget == 0 {
                break;
            }
            *budget -= 1;
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            match after.find(")s") {
                Some(end) => {
                    let name = after[..end].to_ascii_lowercase();
                    let found = self
                        .sections
                        .get(section)
                        .and_then(|s| s.get(&name))
                        .or_else(|| {
                            self.sections
                                .get(DEFAULT_SECTION)
                                .and_then(|s| s.get(&name))
                        });
                    match found {
                        Some(v) => {
                            let expanded = self.interpolate(section, v, depth + 1, budget);
                            *budget = budget.saturating_sub(expanded.len());
                            out.push_str(&expanded);
                        }
                        None => out.push_str(&rest[start..start + 2 + end + 2]),
                    }
                    rest = &after[end + 2..];
                }
                None => {
                    out.push_str(&rest[start..]);
                    rest = "";
                }
            }
        }
        out.push_str(rest);
        out
    }

    /// A trimmed, non-empty value.
    pub fn get_nonempty(&self, section: &str, key: &str) -> Option<String> {
        self.get(section, key).filter(|v| !v.is_empty())
    }

    /// A goconf boolean; an unparseable value is an error naming the key.
    pub fn get_bool(&self, section: &str, key: &str, default: bool) -> Result<bool, String> {
        match self.get_nonempty(section, key) {
            None => Ok(default),
            Some(v) => match v.to_ascii_lowercase().as_str() {
                "t" | "true" | "y" | "yes" | "on" | "1" => Ok(true),
                "f" | "false" | "n" | "no" | "off" | "0" => Ok(false),
                _ => Err(format!("[{section}] {key}: `{v}` is not a boolean")),
            },
        }
    }

    /// A non-negative integer; an unparseable value is an error naming the key.
    pub fn get_u64(&self, section: &str, key: &str, default: u64) -> Result<u64, String> {
        match self.get_nonempty(section, key) {
            None => Ok(default),
            Some(v) => v
                .parse::<u64>()
                .map_err(|_| format!("[{section}] {key}: `{v}` is not a non-negative integer")),
        }
    }
}

/// Expands `$(NAME)` from the environment, as the current Go server does for
/// URLs and secrets; an unset variable becomes `NAME`.
pub fn expand_env(value: &str) -> String {
    if !value.contains("$(") {
        return value.to_string();
    }
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("$(") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find(')') {
            Some(end) => {
                let name = &after[..end];
                out.push_str(&std::env::var(name).unwrap_or_else(|_| name.to_string()));
                rest = &after[end + 1..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// Splits a comma-separated list, tolerating spaces and empty entries.
pub fn split_list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goconf_rules_table() {
        let text = "\
top = level
rem this is a comment
REM also a comment
; comment
# comment
[Backend]
  Secret = abc#def
inline = value # comment
inline2 = value\t; comment
colon: yes
multi = first
  second
dup = one
dup = two
ref = %(dup)s-x
fromdefault = %(top)s
[other]
remote = kept
";
        let f = IniFile::parse(text).unwrap();
        assert_eq!(f.get("default", "top").as_deref(), Some("level"));
        assert_eq!(f.get("backend", "secret").as_deref(), Some("abc#def"));
        assert_eq!(f.get("backend", "inline").as_deref(), Some("value"));
        assert_eq!(f.get("backend", "inline2").as_deref(), Some("value"));
        assert_eq!(f.get("backend", "colon").as_deref(), Some("yes"));
        assert_eq!(f.get("backend", "multi").as_deref(), Some("first\nsecond"));
        assert_eq!(f.get("backend", "dup").as_deref(), Some("two"));
        assert_eq!(f.get("backend", "ref").as_deref(), Some("two-x"));
        assert_eq!(f.get("backend", "fromdefault").as_deref(), Some("level"));
        assert_eq!(f.get("other", "remote").as_deref(), Some("kept"));
        assert!(f.get("backend", "rem").is_none());
        assert!(f.get_bool("other", "remote", false).is_err());
        assert!(f.get_bool("backend", "colon", false).unwrap());
    }

    #[test]
    fn interpolation_of_a_cycle_stays_literal() {
        let f = IniFile::parse("a = x%(b)s\nb = %(a)s\n").unwrap();
        let v = f.get("default", "a").unwrap();
        assert!(v.starts_with("xxxx") && v.ends_with(")s"), "{v}");
        let f = IniFile::parse("a = %(a)s%(a)s%(a)s%(a)s\n").unwrap();
        let v = f.get("default", "a").unwrap();
        assert!(v.len() <= 2 * MAX_INTERPOLATION_WORK);
    }

    #[test]
    fn lists_tolerate_spaces() {
        assert_eq!(split_list("a, b ,c,,"), vec!["a", "b", "c"]);
    }

    #[test]
    fn env_expansion() {
        std::env::set_var("SPREED_TEST_VAR_X", "val");
        assert_eq!(expand_env("a$(SPREED_TEST_VAR_X)b"), "avalb");
        assert_eq!(expand_env("$(SPREED_UNSET_VAR_Y)"), "SPREED_UNSET_VAR_Y");
    }
}

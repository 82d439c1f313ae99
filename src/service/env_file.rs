//! A service's settings file: `KEY=value` lines that both systemd's
//! `EnvironmentFile=` and d8's own loader (dotenvy) read the same way.
//!
//! Values with nothing but letters, digits and `_.:/,+=@%-` are written
//! bare; others in double quotes with `\`, `"` and `$` escaped, which both
//! readers undo. A value with a line break cannot be written and is
//! refused. Lines already there (comments, other variables) are kept.

use super::{Plan, ServiceError};

/// What a new file starts with.
fn header(plan: &Plan) -> String {
    format!(
        "# Settings of the d8 {role} service ({MARKER}).\n# `d8 {cmd}` reads these variables; keys stay in this file (owner-only),\n# never in the service's command line. Edit, then restart the service.\n",
        role = plan.role.as_str(),
        cmd = plan.role.command(),
        MARKER = super::MARKER,
    )
}

fn is_bare(v: &str) -> bool {
    !v.is_empty()
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.:/,+=@%-".contains(c))
}

/// One `KEY=value` line, quoted when needed.
pub fn line(key: &str, value: &str) -> Result<String, ServiceError> {
    if value.contains(['\n', '\r', '\0']) {
        return Err(ServiceError::Manager(format!(
            "{key}: a value with a line break cannot go in a settings file"
        )));
    }
    if is_bare(value) {
        return Ok(format!("{key}={value}"));
    }
    let escaped = value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('$', "\\$");
    Ok(format!("{key}=\"{escaped}\""))
}

/// `existing` with `settings` set: a variable's line is replaced where it
/// is, new ones are appended, everything else is kept.
pub fn merge(existing: &str, settings: &[(String, String)]) -> Result<String, ServiceError> {
    let mut lines: Vec<String> = existing.lines().map(str::to_owned).collect();
    for (k, v) in settings {
        let new = line(k, v)?;
        let at = lines.iter().position(|l| {
            let l = l.trim_start();
            let l = l.strip_prefix("export ").unwrap_or(l);
            l.strip_prefix(k.as_str())
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        });
        match at {
            Some(i) => lines[i] = new,
            None => lines.push(new),
        }
    }
    let mut text = lines.join("\n");
    text.push('\n');
    Ok(text)
}

/// Creates or updates the env file of `plan` (owner-only, atomic).
pub fn update(plan: &Plan, settings: &[(String, String)]) -> Result<(), ServiceError> {
    use crate::node::files;
    let existing = files::read_optional(&plan.env_file)?;
    if existing.is_some() && settings.is_empty() {
        return Ok(());
    }
    let base = existing.unwrap_or_else(|| header(plan));
    let text = merge(&base, settings)?;
    if let Some(dir) = plan.env_file.parent() {
        files::ensure_dir(dir)?;
    }
    files::write_file(&plan.env_file, text.as_bytes(), true)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_quoted_only_when_needed_and_line_breaks_are_refused() {
        assert_eq!(line("A", "gsk_abc-1.2").expect("bare"), "A=gsk_abc-1.2");
        assert_eq!(
            line("URL", "http://10.0.0.2:11434").expect("bare"),
            "URL=http://10.0.0.2:11434"
        );
        assert_eq!(
            line("K", r#"a b"c\d$e#f"#).expect("quoted"),
            r#"K="a b\"c\\d\$e#f""#
        );
        assert_eq!(line("K", "").expect("empty"), r#"K="""#);
        assert!(line("K", "a\nB=evil").is_err());
    }

    #[test]
    fn a_merge_replaces_in_place_appends_new_and_keeps_the_rest() {
        let before = "# keys\nD8_PROVIDERS=echo\n#GROQ_API_KEY=\nexport ORCHESTRATOR_URL = 1.2.3.4\nOTHER=x\n";
        let after = merge(
            before,
            &[
                ("D8_PROVIDERS".into(), "groq".into()),
                ("GROQ_API_KEY".into(), "gsk_1".into()),
                ("ORCHESTRATOR_URL".into(), "10.0.0.2".into()),
            ],
        )
        .expect("merge");
        assert_eq!(
            after,
            "# keys\nD8_PROVIDERS=groq\n#GROQ_API_KEY=\nORCHESTRATOR_URL=10.0.0.2\nOTHER=x\nGROQ_API_KEY=gsk_1\n"
        );
    }

    #[test]
    fn what_is_written_reads_back_the_same_with_dotenvy() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("w.env");
        let values = [
            ("PLAIN", "gsk_abc"),
            ("SPACED", "a b  c"),
            ("NASTY", r#"q"uo\te$HOME#x'y"#),
            ("EMPTY", ""),
        ];
        let settings: Vec<(String, String)> = values
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let text = merge("# header\n", &settings).expect("merge");
        std::fs::write(&path, text).expect("write");
        let read: std::collections::HashMap<String, String> = dotenvy::from_path_iter(&path)
            .expect("open")
            .collect::<Result<_, _>>()
            .expect("parse");
        for (k, v) in values {
            assert_eq!(read.get(k).map(String::as_str), Some(v), "{k}");
        }
    }
}

//! `ferrocable new NAME`: a new app crate, made of the README's quick start (the same three
//! blocks a browser test builds and clicks), with `ferrocable` as a path dependency on this
//! checkout.

use std::path::{Path, PathBuf};

/// The README, whose "Quick start" section is the template.
const README: &str = include_str!("../../../README.md");

/// Why a crate could not be made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NewError {
    /// The name is not a valid package name.
    #[error("{0:?} is not a crate name: use letters, digits, `-` and `_`, starting with a letter")]
    Name(String),
    /// Something is already there.
    #[error("{0} already exists")]
    Exists(PathBuf),
    /// The template is missing a block (the README changed shape).
    #[error("the README's Quick start has no ```{0} block")]
    Template(&'static str),
    /// Writing failed.
    #[error("writing {path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// The first fenced block of `lang` in the README's Quick start section.
fn block(lang: &'static str) -> Result<&'static str, NewError> {
    let start = README
        .find("\n## Quick start\n")
        .ok_or(NewError::Template(lang))?;
    let section = &README[start + 1..];
    let section = section.find("\n## ").map_or(section, |end| &section[..end]);
    let fence = format!("```{lang}\n");
    let from = section.find(&fence).ok_or(NewError::Template(lang))? + fence.len();
    let len = section[from..]
        .find("```")
        .ok_or(NewError::Template(lang))?;
    Ok(&section[from..from + len])
}

fn valid_name(name: &str) -> bool {
    name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && name.len() <= 64
}

/// Where this build's `ferrocable` crate is.
pub(crate) fn default_ferrocable_path() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ferrocable");
    path.canonicalize().unwrap_or(path)
}

/// Makes the crate `name` under `parent`, depending on the `ferrocable` crate at `ferrocable`.
pub(crate) fn create(parent: &Path, name: &str, ferrocable: &Path) -> Result<PathBuf, NewError> {
    if !valid_name(name) {
        return Err(NewError::Name(name.to_owned()));
    }
    let root = parent.join(name);
    if root.exists() {
        return Err(NewError::Exists(root));
    }
    let deps = block("toml")?;
    let dependency = format!(
        "ferrocable = {{ path = {} }}",
        toml_string(&ferrocable.display().to_string())
    );
    let deps: String = deps
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("ferrocable =") {
                dependency.clone()
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let files = [
        (
            "Cargo.toml",
            format!(
                "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\n{deps}\n"
            ),
        ),
        ("src/main.rs", block("rust")?.to_owned()),
        ("package.json", block("json")?.to_owned()),
        (".gitignore", "/target\n/node_modules\n/data\n".to_owned()),
    ];
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| NewError::Io { path, source }
    };
    let src = root.join("src");
    std::fs::create_dir_all(&src).map_err(io(&src))?;
    for (file, text) in files {
        let path = root.join(file);
        std::fs::write(&path, text).map_err(io(&path))?;
    }
    Ok(root)
}

/// `s` as a TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_template_is_the_readme_quick_start() {
        assert!(block("toml").unwrap().starts_with("[dependencies]"));
        assert!(block("rust").unwrap().contains("App::new()"));
        assert!(block("json").unwrap().contains("stimulus_reflex"));
    }

    #[test]
    fn a_crate_is_made_once_with_a_good_name() {
        let parent = std::env::temp_dir().join(format!("ferrocable-new-{}", std::process::id()));
        std::fs::create_dir_all(&parent).unwrap();
        let root = create(
            &parent,
            "my_app",
            Path::new("/opt/ferro \"x\"/crates/ferrocable"),
        )
        .unwrap();
        let cargo = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
        assert!(cargo.contains("name = \"my_app\""), "{cargo}");
        assert!(
            cargo.contains(r#"ferrocable = { path = "/opt/ferro \"x\"/crates/ferrocable" }"#),
            "{cargo}"
        );
        assert_eq!(
            std::fs::read_to_string(root.join("src/main.rs")).unwrap(),
            block("rust").unwrap()
        );
        assert!(matches!(
            create(&parent, "my_app", Path::new("/x")),
            Err(NewError::Exists(_))
        ));
        for bad in ["", "1app", "../up", "a b", "a/b"] {
            assert!(
                matches!(
                    create(&parent, bad, Path::new("/x")),
                    Err(NewError::Name(_))
                ),
                "{bad}"
            );
        }
        std::fs::remove_dir_all(parent).unwrap();
    }
}

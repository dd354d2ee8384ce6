//! TOML config files into typed configs. A wrong field is named with its path
//! (`registry.pull_grant_validity_secs: invalid type: string "x", expected u64`), and
//! a file problem names the file, so the operator knows what to fix.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// Why a config could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The text is not TOML, or a field has the wrong name or type.
    #[error("{}{message}", path.as_ref().map(|p| format!("{}: ", p.display())).unwrap_or_default())]
    Parse {
        /// The file, when the text came from one.
        path: Option<PathBuf>,
        /// The field's path and what is wrong with it.
        message: String,
    },
    /// A value of the right type that the program cannot use ([`Check`]).
    #[error("{}{message}", path.as_ref().map(|p| format!("{}: ", p.display())).unwrap_or_default())]
    Invalid {
        /// The file, when the text came from one.
        path: Option<PathBuf>,
        /// The field and the fix.
        message: String,
    },
}

/// A config that checks what its types alone cannot (ranges, absolute paths, addresses).
pub trait Check {
    /// `Ok` when every value is usable; otherwise [`ConfigError::invalid`] naming the
    /// field and the fix.
    fn check(&self) -> Result<(), ConfigError>;
}

impl ConfigError {
    /// An unusable value: `message` names the field and the fix.
    pub fn invalid(message: impl Into<String>) -> Self {
        ConfigError::Invalid { path: None, message: message.into() }
    }

    /// The same error, saying it came from `path`.
    pub fn in_file(self, path: &Path) -> Self {
        let path = Some(path.to_path_buf());
        match self {
            ConfigError::Parse { message, .. } => ConfigError::Parse { path, message },
            ConfigError::Invalid { message, .. } => ConfigError::Invalid { path, message },
            other => other,
        }
    }
}

/// Parses TOML text into `T` and [`Check`]s it.
pub fn parse<T: DeserializeOwned + Check>(text: &str) -> Result<T, ConfigError> {
    let config: T = parse_unchecked(text)?;
    config.check()?;
    Ok(config)
}

/// Parses TOML text into `T`, naming the field at fault.
pub fn parse_unchecked<T: DeserializeOwned>(text: &str) -> Result<T, ConfigError> {
    let deserializer = toml::Deserializer::parse(text)
        .map_err(|e| ConfigError::Parse { path: None, message: e.to_string().trim_end().to_string() })?;
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = inner.message().trim_end().to_string();
        let message = if path.is_empty() || path == "." { message } else { format!("{path}: {message}") };
        ConfigError::Parse { path: None, message }
    })
}

/// Reads, parses and [`Check`]s the TOML file at `path`; every error names the file.
pub fn load<T: DeserializeOwned + Check>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
    parse(&text).map_err(|e| e.in_file(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        #[serde(default)]
        inner: Inner,
    }

    #[derive(Debug, Default, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        #[serde(default)]
        count: u32,
    }

    impl Check for Outer {
        fn check(&self) -> Result<(), ConfigError> {
            if self.inner.count > 9 {
                return Err(ConfigError::invalid("inner.count must be at most 9"));
            }
            Ok(())
        }
    }

    #[test]
    fn a_wrong_field_is_named_with_its_path() {
        let err = parse::<Outer>("[inner]\ncount = \"two\"\n").unwrap_err().to_string();
        assert!(err.starts_with("inner.count: invalid type: string \"two\""), "{err}");
        let err = parse::<Outer>("[inner]\ncolor = 1\n").unwrap_err().to_string();
        assert!(err.contains("unknown field `color`"), "{err}");
        assert_eq!(parse::<Outer>("[inner]\ncount = 2\n").unwrap().inner.count, 2);
        let err = parse::<Outer>("[inner]\ncount = 10\n").unwrap_err().to_string();
        assert_eq!(err, "inner.count must be at most 9");
    }

    #[test]
    fn a_file_error_names_the_file() {
        let err = load::<Outer>(Path::new("/nonexistent/slipway.toml")).unwrap_err().to_string();
        assert!(err.starts_with("cannot read /nonexistent/slipway.toml: "), "{err}");
        let dir = std::env::temp_dir().join(format!("slipway-common-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("bad.toml");
        std::fs::write(&file, "inner = [").unwrap();
        let err = load::<Outer>(&file).unwrap_err().to_string();
        assert!(err.starts_with(&format!("{}: ", file.display())), "{err}");
        std::fs::write(&file, "[inner]\ncount = 10\n").unwrap();
        let err = load::<Outer>(&file).unwrap_err().to_string();
        assert_eq!(err, format!("{}: inner.count must be at most 9", file.display()));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

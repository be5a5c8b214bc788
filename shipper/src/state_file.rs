//! Reading the JSON state files and datagrams that another logship process,
//! or another build, wrote (FORMAT.md, "State files and datagrams"): the
//! length is bounded before anything is parsed, and a newer format version
//! is refused by name before any other field is read, never guessed at.

use serde::de::DeserializeOwned;

use crate::FormatVersion;

/// The most a state file may hold unless its reader says otherwise.
pub const MAX_STATE_FILE: usize = 1 << 20;

/// Why a state file was not read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StateFileError {
    #[error("{len} bytes, more than the {max} it may hold")]
    TooLarge { len: usize, max: usize },
    #[error("not JSON: {0}")]
    NotJson(String),
    #[error("not a JSON object")]
    NotObject,
    #[error("its \"version\" is not a whole number")]
    BadVersion,
    #[error("format version {found} is newer than this build reads ({reads}): upgrade logship")]
    Newer { found: u64, reads: u32 },
    #[error("{0}")]
    Fields(String),
}

/// The object a state file holds, once its length and version pass.
pub fn parse_object(
    bytes: &[u8],
    max: usize,
) -> Result<serde_json::Map<String, serde_json::Value>, StateFileError> {
    if bytes.len() > max {
        return Err(StateFileError::TooLarge {
            len: bytes.len(),
            max,
        });
    }
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| StateFileError::NotJson(e.to_string()))?;
    let serde_json::Value::Object(map) = value else {
        return Err(StateFileError::NotObject);
    };
    version_of(&map)?;
    Ok(map)
}

/// The format version an object carries (absent: 1), refused when newer.
pub fn version_of(
    map: &serde_json::Map<String, serde_json::Value>,
) -> Result<FormatVersion, StateFileError> {
    let found = match map.get("version") {
        None => 1,
        Some(v) => v.as_u64().ok_or(StateFileError::BadVersion)?,
    };
    if found > u64::from(FormatVersion::CURRENT.0) {
        return Err(StateFileError::Newer {
            found,
            reads: FormatVersion::CURRENT.0,
        });
    }
    Ok(FormatVersion(found as u32))
}

/// Reads at most `max + 1` bytes of `path` (`None` when it does not exist),
/// so that `parse` refuses a file that is too large without reading it whole.
pub fn read_file(path: &std::path::Path, max: usize) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut bytes = Vec::new();
    file.take(max as u64 + 1).read_to_end(&mut bytes)?;
    Ok(Some(bytes))
}

/// A state file parsed into `T`, once its length and version pass.
pub fn parse<T: DeserializeOwned>(bytes: &[u8], max: usize) -> Result<T, StateFileError> {
    let map = parse_object(bytes, max)?;
    serde_json::from_value(serde_json::Value::Object(map))
        .map_err(|e| StateFileError::Fields(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Probe {
        a: u64,
    }

    #[test]
    fn a_newer_version_is_refused_before_its_fields_are_read() {
        let e = parse::<Probe>(br#"{"version": 99, "b": "x"}"#, 100).unwrap_err();
        assert_eq!(
            e,
            StateFileError::Newer {
                found: 99,
                reads: FormatVersion::CURRENT.0
            }
        );
        assert!(e.to_string().contains("upgrade logship"), "{e}");
    }

    #[test]
    fn an_absent_version_is_one_and_the_length_is_bounded() {
        assert_eq!(parse::<Probe>(br#"{"a": 3}"#, 100).unwrap().a, 3);
        assert!(matches!(
            parse::<Probe>(br#"{"a": 3}"#, 4),
            Err(StateFileError::TooLarge { len: 8, max: 4 })
        ));
        assert_eq!(
            parse::<Probe>(b"[1]", 100).unwrap_err(),
            StateFileError::NotObject
        );
        assert_eq!(
            parse::<Probe>(br#"{"version": "1"}"#, 100).unwrap_err(),
            StateFileError::BadVersion
        );
        assert!(matches!(
            parse::<Probe>(br#"{"b": 1}"#, 100),
            Err(StateFileError::Fields(_))
        ));
    }

    #[test]
    fn a_file_is_read_only_up_to_its_bound_plus_one_byte() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big.json");
        std::fs::write(&p, vec![b' '; 10_000]).unwrap();
        let bytes = read_file(&p, 100).unwrap().unwrap();
        assert_eq!(bytes.len(), 101);
        assert!(matches!(
            parse::<Probe>(&bytes, 100),
            Err(StateFileError::TooLarge { len: 101, max: 100 })
        ));
        assert_eq!(read_file(&dir.path().join("none"), 100).unwrap(), None);
    }
}

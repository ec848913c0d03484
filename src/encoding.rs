//! How domain values are written in JSON (relay frames, summary.json):
//! durations in milliseconds, bytes in base64, secrets as plain text for the
//! encrypted relay channel only. Used through `#[serde(with = …)]`.

/// Bytes (output lines, results archives) as base64 text.
pub mod bytes_base64 {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes `bytes` as base64.
    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    /// Reads base64 back into bytes.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

/// A duration as whole milliseconds.
pub mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes `d` in milliseconds.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    /// Reads milliseconds back into a duration.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// An optional duration as whole milliseconds, or null.
pub mod millis_opt {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes `d` in milliseconds, or null.
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&(d.as_millis() as u64)),
            None => s.serialize_none(),
        }
    }

    /// Reads milliseconds or null back.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
    }
}

/// A password as its text. Only plans carry one, to the relay, inside the
/// SSH connection; `Debug` still never shows it.
pub mod secret {
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serializer};

    use crate::auth::Secret;

    /// Writes the password itself, or null.
    pub fn serialize<S: Serializer>(p: &Option<Arc<Secret>>, s: S) -> Result<S::Ok, S::Error> {
        match p {
            Some(p) => s.serialize_some(p.expose()),
            None => s.serialize_none(),
        }
    }

    /// Reads a password back, or null.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Arc<Secret>>, D::Error> {
        Ok(Option::<String>::deserialize(d)?.map(|p| Arc::new(Secret::new(p))))
    }
}

//! Kubernetes resource quantities (`64Mi`, `500m`, `1.5G`).

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

/// A quantity as the user wrote it. Accepts a string or a number in
/// manifests and is stored as a string, as Kubernetes does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, JsonSchema)]
#[schemars(transparent)]
pub struct Quantity(pub String);

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            S(String),
            I(i64),
            F(f64),
        }
        Ok(Quantity(match Raw::deserialize(d)? {
            Raw::S(s) => s,
            Raw::I(i) => i.to_string(),
            Raw::F(f) => f.to_string(),
        }))
    }
}

const SUFFIXES: &[(&str, f64)] = &[
    ("Ki", 1024.0),
    ("Mi", 1024.0 * 1024.0),
    ("Gi", 1024.0 * 1024.0 * 1024.0),
    ("Ti", 1024.0 * 1024.0 * 1024.0 * 1024.0),
    ("m", 0.001),
    ("k", 1e3),
    ("M", 1e6),
    ("G", 1e9),
    ("T", 1e12),
];

impl Quantity {
    /// The value in base units (bytes, cores), or a message saying why not.
    pub fn value(&self) -> Result<f64, String> {
        let s = self.0.trim();
        let (num, mult) = SUFFIXES
            .iter()
            .find_map(|(suf, m)| s.strip_suffix(suf).map(|n| (n, *m)))
            .unwrap_or((s, 1.0));
        let n: f64 = num
            .parse()
            .map_err(|_| format!("{:?} is not a quantity (expected e.g. 64Mi, 500m, 2)", self.0))?;
        if !n.is_finite() || n < 0.0 {
            return Err(format!("{:?} must be a non-negative number", self.0));
        }
        Ok(n * mult)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_suffixes() {
        assert_eq!(Quantity("64Mi".into()).value(), Ok(64.0 * 1024.0 * 1024.0));
        assert_eq!(Quantity("500m".into()).value(), Ok(0.5));
        assert_eq!(Quantity("2".into()).value(), Ok(2.0));
        assert_eq!(Quantity("1G".into()).value(), Ok(1e9));
        assert!(Quantity("lots".into()).value().is_err());
        assert!(Quantity("-1".into()).value().is_err());
    }
}

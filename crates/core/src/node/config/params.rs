//! Typed access to the flat parameter map with "name: problem" errors.
//! Each value's default and range come from the parameter table
//! ([`super::table::PARAMS`]): a name is declared once, where its default
//! is. Start-up only.

use super::table::{self, Default, Ty};
use super::{expand_path, ConfigError, ParamMap, ParamValue, Result};

pub(super) struct Params<'a>(pub(super) &'a ParamMap);

/// The table's entry for `name` (a programming error if missing: every
/// name read is declared in the table).
fn spec(name: &str) -> &'static table::Param {
    table::lookup(name)
        .unwrap_or_else(|| panic!("parameter '{name}' is missing from config::table"))
}

impl Params<'_> {
    pub(super) fn get(&self, name: &str) -> Option<&ParamValue> {
        debug_assert!(
            table::lookup(name).is_some(),
            "parameter '{name}' is missing from config::table"
        );
        self.0
            .get(name)
            .filter(|v| !matches!(v, ParamValue::NotSet))
    }

    /// A string; its default from the table (an error if required).
    pub(super) fn string(&self, name: &str) -> Result<String> {
        let default = match spec(name).default {
            Default::Str(d) => Some(d),
            Default::Required => None,
            d => panic!("'{name}' has a non-string default {d:?}"),
        };
        match (self.get(name), default) {
            (Some(ParamValue::String(s)), _) => Ok(s.clone()),
            (None, Some(d)) => Ok(d.to_string()),
            (None, None) => Err(ConfigError::param(
                name,
                format!("parameter '{name}' is required"),
            )),
            (Some(v), _) => Err(ConfigError::param(
                name,
                format!("parameter '{name}' must be a string, got {v:?}"),
            )),
        }
    }

    /// A file-system path: a string with a leading `~` and `$VAR` /
    /// `${VAR}` / `${VAR:-default}` expanded ([`expand_path`]).
    pub(super) fn path(&self, name: &str) -> Result<String> {
        expand_path(&self.string(name)?)
            .map_err(|e| ConfigError::param(name, format!("'{name}': {e}")))
    }

    /// A number within the table's range (when it has one).
    pub(super) fn f64(&self, name: &str) -> Result<f64> {
        let p = spec(name);
        let (Ty::Double { lo, hi, what }, Default::Double(default)) = (p.ty, p.default) else {
            panic!("'{name}' is not a number with a default in config::table");
        };
        let v = match self.get(name) {
            None => default,
            Some(ParamValue::Double(v)) => *v,
            Some(ParamValue::Integer(v)) => *v as f64,
            Some(v) => {
                return Err(ConfigError::param(
                    name,
                    format!("parameter '{name}' must be a number, got {v:?}"),
                ))
            }
        };
        if what.is_empty() || (v.is_finite() && (lo..=hi).contains(&v)) {
            Ok(v)
        } else {
            Err(ConfigError::param(
                name,
                format!("'{name}' must be {what}, got {v}"),
            ))
        }
    }

    /// An integer within the table's range.
    pub(super) fn i64(&self, name: &str) -> Result<i64> {
        let Ty::Int { hi, .. } = spec(name).ty else {
            panic!("'{name}' is not an integer in config::table");
        };
        self.i64_max(name, hi)
    }

    /// An integer within the table's lower bound and `hi` (a bound known
    /// only from other parameters).
    pub(super) fn i64_max(&self, name: &str, hi: i64) -> Result<i64> {
        let p = spec(name);
        let (Ty::Int { lo, hi: table_hi }, Default::Int(default)) = (p.ty, p.default) else {
            panic!("'{name}' is not an integer with a default in config::table");
        };
        let v = match self.get(name) {
            None => default,
            Some(ParamValue::Integer(v)) => *v,
            Some(v) => {
                return Err(ConfigError::param(
                    name,
                    format!("parameter '{name}' must be an integer, got {v:?}"),
                ))
            }
        };
        let hi = hi.min(table_hi);
        let unbounded = lo == i64::MIN && hi == i64::MAX;
        if unbounded || (lo..=hi).contains(&v) {
            Ok(v)
        } else {
            Err(ConfigError::param(
                name,
                format!("'{name}' must be within {lo}..={hi}, got {v}"),
            ))
        }
    }

    pub(super) fn bool(&self, name: &str) -> Result<bool> {
        let Default::Bool(default) = spec(name).default else {
            panic!("'{name}' is not a bool with a default in config::table");
        };
        match self.get(name) {
            None => Ok(default),
            Some(ParamValue::Bool(v)) => Ok(*v),
            Some(v) => Err(ConfigError::param(
                name,
                format!("parameter '{name}' must be true or false, got {v:?}"),
            )),
        }
    }

    pub(super) fn strings(&self, name: &str) -> Result<Vec<String>> {
        match self.get(name) {
            None => Ok(Vec::new()),
            Some(ParamValue::StringArray(v)) => Ok(v.clone()),
            Some(ParamValue::String(s)) if s.is_empty() => Ok(Vec::new()),
            Some(ParamValue::String(s)) => Ok(vec![s.clone()]),
            Some(v) => Err(ConfigError::param(
                name,
                format!("parameter '{name}' must be a list of strings, got {v:?}"),
            )),
        }
    }

    pub(super) fn f64s(&self, name: &str) -> Result<Vec<f64>> {
        match self.get(name) {
            None => Ok(Vec::new()),
            Some(ParamValue::DoubleArray(v)) => Ok(v.clone()),
            Some(ParamValue::IntegerArray(v)) => Ok(v.iter().map(|&x| x as f64).collect()),
            Some(v) => Err(ConfigError::param(
                name,
                format!("parameter '{name}' must be a list of numbers, got {v:?}"),
            )),
        }
    }

    pub(super) fn usizes(&self, name: &str) -> Result<Vec<usize>> {
        match self.get(name) {
            None => Ok(Vec::new()),
            Some(ParamValue::IntegerArray(v)) => v
                .iter()
                .map(|&x| {
                    usize::try_from(x).map_err(|_| {
                        ConfigError::param(name, format!("parameter '{name}': negative index {x}"))
                    })
                })
                .collect(),
            Some(v) => Err(ConfigError::param(
                name,
                format!("parameter '{name}' must be a list of integers, got {v:?}"),
            )),
        }
    }
}

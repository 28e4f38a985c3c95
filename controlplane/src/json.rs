//! JSON objects only: serde reads a struct from an array too (its fields in order), so
//! `[null, null]` would pass for a request. [`Object`] takes a JSON object or nothing.

use serde::de::{DeserializeOwned, Deserializer, Error as _};
use serde::Deserialize;
use serde_json::{Map, Value};

/// A `T` read from a JSON object, never from an array.
#[derive(Debug, Clone, Default)]
pub struct Object<T>(pub T);

impl<'de, T: DeserializeOwned> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let map = Map::<String, Value>::deserialize(d)?;
        serde_json::from_value(Value::Object(map)).map(Object).map_err(D::Error::custom)
    }
}

/// `deserialize_with` for a struct field: an object.
pub fn object<'de, D: Deserializer<'de>, T: DeserializeOwned>(d: D) -> Result<T, D::Error> {
    Object::deserialize(d).map(|o| o.0)
}

/// `deserialize_with` for an `Option` field: an object, or null.
pub fn opt_object<'de, D: Deserializer<'de>, T: DeserializeOwned>(d: D) -> Result<Option<T>, D::Error> {
    Ok(Option::<Object<T>>::deserialize(d)?.map(|o| o.0))
}

/// `deserialize_with` for a list field: objects.
pub fn objects<'de, D: Deserializer<'de>, T: DeserializeOwned>(d: D) -> Result<Vec<T>, D::Error> {
    Ok(Vec::<Object<T>>::deserialize(d)?.into_iter().map(|o| o.0).collect())
}

/// `deserialize_with` for an `Option` list field: objects, or null.
pub fn opt_objects<'de, D: Deserializer<'de>, T: DeserializeOwned>(d: D) -> Result<Option<Vec<T>>, D::Error> {
    Ok(Option::<Vec<Object<T>>>::deserialize(d)?.map(|v| v.into_iter().map(|o| o.0).collect()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Pair {
        a: Option<u32>,
        b: Option<Vec<Object<Pair>>>,
    }

    #[test]
    fn arrays_are_not_objects_at_any_depth() {
        assert!(serde_json::from_str::<Pair>("[1, null]").is_ok(), "serde's own reading takes arrays");
        assert!(serde_json::from_str::<Object<Pair>>("[1, null]").is_err());
        assert!(serde_json::from_str::<Object<Pair>>(r#"{"b": [[2, null]]}"#).is_err());
        let p = serde_json::from_str::<Object<Pair>>(r#"{"a": 1, "b": [{"a": 2}]}"#).unwrap().0;
        assert_eq!(p.a, Some(1));
        assert_eq!(p.b.unwrap()[0].0.a, Some(2));
    }
}

//! `GET /fnrt/v1/openapi.json`: the OpenAPI 3.1 document of the API this control plane
//! serves (Scaleway's Functions v1beta1 and the extensions), with its own region filled
//! in. Public: it says nothing a Scaleway user does not know. `scripts/test` fuzzes the
//! API against it.

use std::sync::Arc;

use axum::extract::State as AxState;
use axum::Json;
use serde_json::Value;

use crate::Ctx;

/// The document as kept in the repository (`controlplane/openapi.json`).
const DOCUMENT: &str = include_str!("../../openapi.json");

/// The document for a control plane serving `region`.
pub fn document(region: &str) -> Value {
    let mut doc: Value = serde_json::from_str(DOCUMENT).expect("controlplane/openapi.json is JSON");
    doc["components"]["parameters"]["region"]["schema"]["enum"] = serde_json::json!([region]);
    doc
}

/// The handler.
pub async fn serve(AxState(ctx): AxState<Arc<Ctx>>) -> Json<Value> {
    Json(document(&ctx.cfg.region))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `$ref` of the document names something it has.
    #[test]
    fn every_reference_resolves() {
        fn walk(v: &Value, doc: &Value, seen: &mut usize) {
            match v {
                Value::Object(m) => {
                    if let Some(Value::String(r)) = m.get("$ref") {
                        let pointer = r.strip_prefix('#').unwrap_or_else(|| panic!("{r} is not local"));
                        assert!(doc.pointer(pointer).is_some(), "{r} names nothing");
                        *seen += 1;
                    }
                    m.values().for_each(|x| walk(x, doc, seen));
                }
                Value::Array(a) => a.iter().for_each(|x| walk(x, doc, seen)),
                _ => {}
            }
        }
        let doc = document("nl-ams");
        let mut seen = 0;
        walk(&doc, &doc, &mut seen);
        assert!(seen > 100, "{seen} references");
        assert_eq!(doc["components"]["parameters"]["region"]["schema"]["enum"][0], "nl-ams");
    }
}

//! `page`, `page_size`, `order_by` and filters of the list calls.

use std::collections::HashMap;

use serde_json::Value;

use crate::error::Error;

/// The most items a page may hold, and the default.
pub const MAX_PAGE_SIZE: usize = 100;
const DEFAULT_PAGE_SIZE: usize = 20;
/// The last page number (Scaleway's pages are 32-bit).
const MAX_PAGE: usize = i32::MAX as usize;

/// A parsed list query.
#[derive(Debug)]
pub struct ListQuery {
    page: usize,
    page_size: usize,
    /// The order asked for (checked against the resource's).
    pub order_by: String,
    params: HashMap<String, String>,
}

impl ListQuery {
    /// Parses `raw` (the query string); `orders` are the resource's orders, the first the default.
    pub fn parse(raw: Option<&str>, orders: &[&str]) -> Result<ListQuery, Error> {
        let params: HashMap<String, String> =
            form_urlencoded::parse(raw.unwrap_or_default().as_bytes()).into_owned().collect();
        let mut errors = Vec::new();
        let number = |k: &str, default: usize, errors: &mut Vec<(String, String)>| match params.get(k) {
            None => default,
            Some(v) => v.parse().unwrap_or_else(|_| {
                errors.push((k.to_string(), format!("{v:?} is not a whole number")));
                default
            }),
        };
        let page = number("page", 1, &mut errors);
        let page_size = number("page_size", DEFAULT_PAGE_SIZE, &mut errors);
        if page == 0 || page > MAX_PAGE {
            errors.push(("page".into(), format!("{page} is out of range: page must be 1 to {MAX_PAGE}")));
        }
        if page_size == 0 || page_size > MAX_PAGE_SIZE {
            errors.push((
                "page_size".into(),
                format!("{page_size} is out of range: page_size must be 1 to {MAX_PAGE_SIZE}"),
            ));
        }
        let order_by = params
            .get("order_by")
            .filter(|o| !o.is_empty())
            .cloned()
            .unwrap_or_else(|| orders[0].to_string());
        if !orders.contains(&order_by.as_str()) {
            errors.push(("order_by".into(), format!("{order_by:?} is not an order: use one of {orders:?}")));
        }
        if !errors.is_empty() {
            return Err(Error::Invalid(errors));
        }
        Ok(ListQuery { page, page_size, order_by, params })
    }

    /// A parameter's value when given, empty or not (for parameters that are numbers,
    /// times or flags, where an empty value is a mistake rather than "any").
    pub fn given(&self, key: &str) -> Option<&str> {
        self.params.get(key).map(String::as_str)
    }

    /// A filter's value, when given and not empty.
    pub fn filter(&self, key: &str) -> Option<&str> {
        self.params.get(key).map(String::as_str).filter(|v| !v.is_empty())
    }

    /// The page of `items` (already filtered and ordered) as `{"<plural>": [...], "total_count": N}`;
    /// a page past the end is empty.
    pub fn page(&self, plural: &str, items: Vec<Value>) -> Value {
        let total = items.len();
        let page: Vec<Value> = items
            .into_iter()
            .skip((self.page - 1).saturating_mul(self.page_size))
            .take(self.page_size)
            .collect();
        serde_json::json!({ plural: page, "total_count": total })
    }
}

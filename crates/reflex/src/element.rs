//! The reflex element: its attributes and `data-*` values, as the client serialized them.

use serde_json::{Map, Value};

/// The element that triggered the reflex.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Element {
    attrs: Map<String, Value>,
    dataset: Map<String, Value>,
    dataset_all: Map<String, Value>,
}

fn data_key(name: &str) -> String {
    let name = name.replace('_', "-");
    if name.starts_with("data-") {
        name
    } else {
        format!("data-{name}")
    }
}

impl Element {
    /// Reads `attrs` and `dataset` (`{"dataset":{…},"datasetAll":{…}}`) from a payload.
    pub fn from_payload(raw: &Map<String, Value>) -> Self {
        let obj = |v: Option<&Value>| v.and_then(Value::as_object).cloned().unwrap_or_default();
        let dataset = raw.get("dataset");
        Element {
            attrs: obj(raw.get("attrs")),
            dataset: obj(dataset.and_then(|d| d.get("dataset"))),
            dataset_all: obj(dataset.and_then(|d| d.get("datasetAll"))),
        }
    }

    /// An attribute (`id`, `type`, `data-x`, …) as a string.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs.get(name).and_then(Value::as_str)
    }

    /// A `data-*` value: `data("post_id")`, `data("post-id")` and `data("data-post-id")` all
    /// read `data-post-id`, from the merged dataset first, then the element's attributes.
    pub fn data(&self, name: &str) -> Option<&str> {
        let key = data_key(name);
        self.dataset
            .get(&key)
            .or_else(|| self.attrs.get(&key))
            .and_then(Value::as_str)
    }

    /// Every value of a `data-reflex-dataset-all` key.
    pub fn data_all(&self, name: &str) -> Vec<&str> {
        self.dataset_all
            .get(&data_key(name))
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default()
    }

    /// The element's value (absent for elements without one).
    pub fn value(&self) -> Option<&str> {
        self.attr("value")
    }

    /// Whether a checkbox or radio is checked.
    pub fn checked(&self) -> bool {
        self.attrs
            .get("checked")
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }

    /// A `data-*` value as a boolean (empty counts as true; `false`, `0`, `f`, `off` as false).
    pub fn boolean(&self, name: &str) -> Option<bool> {
        self.data(name).map(|v| {
            !matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "false" | "0" | "f" | "off"
            )
        })
    }

    /// A `data-*` value as a number.
    pub fn numeric(&self, name: &str) -> Option<f64> {
        self.data(name).and_then(|v| v.trim().parse().ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_attributes_datasets_and_helpers() {
        let raw = json!({"attrs": {"id": "b", "value": "7", "checked": true, "data-post-id": "42"},
                         "dataset": {"dataset": {"data-post-id": "42", "data-on": "", "data-off": "off", "data-n": "2.5"},
                                     "datasetAll": {"data-tag": ["a", "b"]}}});
        let e = Element::from_payload(raw.as_object().unwrap());
        assert_eq!(e.attr("id"), Some("b"));
        assert_eq!(e.value(), Some("7"));
        assert!(e.checked());
        assert_eq!(e.data("post_id"), Some("42"));
        assert_eq!(e.data("data-post-id"), Some("42"));
        assert_eq!(e.data_all("tag"), vec!["a", "b"]);
        assert_eq!(e.boolean("on"), Some(true));
        assert_eq!(e.boolean("off"), Some(false));
        assert_eq!(e.numeric("n"), Some(2.5));
        assert_eq!(e.data("missing"), None);
    }
}

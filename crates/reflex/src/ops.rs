//! CableReady 5 operations and the envelope the client expects.

use serde_json::{Map, Value, json};

/// The `cable_ready` npm version; every envelope must carry exactly this.
pub const CABLE_READY_VERSION: &str = "5.0.6";

/// One CableReady operation: a JSON object with `operation` and lower-camelCase fields.
#[derive(Debug, Clone, PartialEq)]
pub struct Operation(pub Map<String, Value>);

impl Operation {
    /// An operation named `name` (camelCase, e.g. `innerHtml`) with `fields`.
    pub fn new(name: &str, fields: Value) -> Self {
        let mut map = match fields {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        map.insert("operation".into(), Value::from(name));
        Operation(map)
    }

    /// The operation name.
    pub fn name(&self) -> &str {
        self.0
            .get("operation")
            .and_then(Value::as_str)
            .unwrap_or("")
    }

    /// Sets a field.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.0.insert(key.into(), value.into());
        self
    }

    /// `morph`: morphdom the element's children (`childrenOnly`) to `html`.
    pub fn morph(selector: &str, html: &str) -> Self {
        Self::new(
            "morph",
            json!({"selector": selector, "html": html, "childrenOnly": true}),
        )
    }
    /// `innerHtml`: replace the element's content.
    pub fn inner_html(selector: &str, html: &str) -> Self {
        Self::new("innerHtml", json!({"selector": selector, "html": html}))
    }
    /// `outerHtml`: replace the element.
    pub fn outer_html(selector: &str, html: &str) -> Self {
        Self::new("outerHtml", json!({"selector": selector, "html": html}))
    }
    /// `insertAdjacentHtml` at `position` (`beforeend`, `afterbegin`, …).
    pub fn insert_adjacent_html(selector: &str, html: &str, position: &str) -> Self {
        Self::new(
            "insertAdjacentHtml",
            json!({"selector": selector, "html": html, "position": position}),
        )
    }
    /// `textContent`.
    pub fn text_content(selector: &str, text: &str) -> Self {
        Self::new("textContent", json!({"selector": selector, "text": text}))
    }
    /// `remove`.
    pub fn remove(selector: &str) -> Self {
        Self::new("remove", json!({"selector": selector}))
    }
    /// `setAttribute`.
    pub fn set_attribute(selector: &str, name: &str, value: &str) -> Self {
        Self::new(
            "setAttribute",
            json!({"selector": selector, "name": name, "value": value}),
        )
    }
    /// `removeAttribute`.
    pub fn remove_attribute(selector: &str, name: &str) -> Self {
        Self::new(
            "removeAttribute",
            json!({"selector": selector, "name": name}),
        )
    }
    /// `addCssClass`.
    pub fn add_css_class(selector: &str, name: &str) -> Self {
        Self::new("addCssClass", json!({"selector": selector, "name": name}))
    }
    /// `removeCssClass`.
    pub fn remove_css_class(selector: &str, name: &str) -> Self {
        Self::new(
            "removeCssClass",
            json!({"selector": selector, "name": name}),
        )
    }
    /// `setValue` on an input.
    pub fn set_value(selector: &str, value: &str) -> Self {
        Self::new("setValue", json!({"selector": selector, "value": value}))
    }
    /// `setFocus`.
    pub fn set_focus(selector: &str) -> Self {
        Self::new("setFocus", json!({"selector": selector}))
    }
    /// `dispatchEvent` on `selector` (or `document` when `None`).
    pub fn dispatch_event(selector: Option<&str>, name: &str, detail: Value) -> Self {
        Self::new(
            "dispatchEvent",
            json!({"selector": selector, "name": name, "detail": detail}),
        )
    }
    /// `consoleLog` at `level` (`log`, `info`, `warn`, `error`).
    pub fn console_log(message: &str, level: &str) -> Self {
        Self::new("consoleLog", json!({"message": message, "level": level}))
    }
    /// `pushState`.
    pub fn push_state(url: &str) -> Self {
        Self::new("pushState", json!({"url": url, "title": "", "state": {}}))
    }
    /// `redirectTo` (Turbo visit when present).
    pub fn redirect_to(url: &str) -> Self {
        Self::new(
            "redirectTo",
            json!({"url": url, "action": "advance", "turbo": true}),
        )
    }
    /// `setTitle`.
    pub fn set_title(title: &str) -> Self {
        Self::new("setTitle", json!({"title": title}))
    }
}

/// A CableReady envelope: `{"cableReady":true,"operations":[…],"version":"5.0.6"}`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Envelope {
    /// The operations, in order.
    pub operations: Vec<Operation>,
}

impl Envelope {
    /// An envelope of `operations`.
    pub fn new(operations: Vec<Operation>) -> Self {
        Envelope { operations }
    }

    /// The envelope as JSON.
    pub fn to_value(&self) -> Value {
        json!({
            "cableReady": true,
            "operations": self.operations.iter().map(|o| Value::Object(o.0.clone())).collect::<Vec<_>>(),
            "version": CABLE_READY_VERSION,
        })
    }

    /// The envelope as JSON text.
    pub fn to_json(&self) -> String {
        self.to_value().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_carries_the_cable_ready_version_and_camel_case_ops() {
        let e = Envelope::new(vec![
            Operation::inner_html("#x", "<b>1</b>"),
            Operation::dispatch_event(None, "go", json!({})),
        ]);
        let v = e.to_value();
        assert_eq!(v["cableReady"], true);
        assert_eq!(v["version"], "5.0.6");
        assert_eq!(v["operations"][0]["operation"], "innerHtml");
        assert_eq!(v["operations"][1]["operation"], "dispatchEvent");
        assert_eq!(v["operations"][1]["selector"], Value::Null);
    }
}

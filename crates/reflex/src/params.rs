//! Form parameters the way Rack reads them: `a=1&b[c]=2&d[]=3&d[]=4`.

use serde_json::{Map, Value};

/// Parses an URL-encoded query or form body (`+` and `%20` are spaces) into nested JSON,
/// following Rack's nested-query rules for `a[b]` and `a[]`. Malformed pieces are skipped,
/// never a panic.
pub fn parse_nested_query(input: &str) -> Map<String, Value> {
    let mut out = Map::new();
    for (key, value) in form_urlencoded::parse(input.as_bytes()) {
        let mut parts = Vec::new();
        let (head, mut rest) = match key.find('[') {
            Some(i) => (&key[..i], &key[i..]),
            None => (key.as_ref(), ""),
        };
        if head.is_empty() {
            continue;
        }
        parts.push(head.to_owned());
        while let Some(stripped) = rest.strip_prefix('[') {
            let Some(end) = stripped.find(']') else { break };
            parts.push(stripped[..end].to_owned());
            rest = &stripped[end + 1..];
        }
        insert(&mut out, &parts, Value::String(value.into_owned()));
    }
    out
}

fn insert(map: &mut Map<String, Value>, parts: &[String], value: Value) {
    let (first, rest) = match parts.split_first() {
        Some(x) => x,
        None => return,
    };
    if rest.is_empty() {
        map.insert(first.clone(), value);
        return;
    }
    if rest[0].is_empty() {
        // `a[]=x`: append to an array (deeper nesting under [] is flattened to the value).
        let entry = map
            .entry(first.clone())
            .or_insert_with(|| Value::Array(Vec::new()));
        if !entry.is_array() {
            *entry = Value::Array(Vec::new());
        }
        if let Value::Array(items) = entry {
            if rest.len() == 1 {
                items.push(value);
            } else {
                let mut inner = Map::new();
                insert(&mut inner, &rest[1..], value);
                items.push(Value::Object(inner));
            }
        }
        return;
    }
    let entry = map
        .entry(first.clone())
        .or_insert_with(|| Value::Object(Map::new()));
    if !entry.is_object() {
        *entry = Value::Object(Map::new());
    }
    if let Value::Object(inner) = entry {
        insert(inner, rest, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rack_nested_rules_and_both_space_encodings() {
        let m = parse_nested_query(
            "post%5Btitle%5D=Hello%20world&post%5Btags%5D%5B%5D=a&post%5Btags%5D%5B%5D=b&q=x+y&empty=",
        );
        assert_eq!(
            Value::Object(m),
            json!({"post": {"title": "Hello world", "tags": ["a", "b"]}, "q": "x y", "empty": ""})
        );
    }

    #[test]
    fn hostile_input_is_skipped_not_fatal() {
        let m = parse_nested_query("=1&[x]=2&a[b=3&%ZZ=4&&a=5");
        assert_eq!(m.get("a"), Some(&json!("5")));
        assert!(parse_nested_query("").is_empty());
    }
}

//! Cutting selectors out of rendered HTML (page morphs) and choosing the operation for a
//! selector morph. scraper (html5ever) parses like a browser, so void and implicitly closed
//! elements extract correctly; it is the slower of the two parsers compared in the stack notes,
//! a cost paid only by page morphs (selector morphs parse only their fragment).

use scraper::{Html, Selector};

use crate::ops::Operation;

/// A selector the client sent cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid CSS selector {0:?}")]
pub struct SelectorError(pub String);

fn selector(s: &str) -> Result<Selector, SelectorError> {
    Selector::parse(s).map_err(|_| SelectorError(s.to_owned()))
}

/// The inner HTML of the first element matching each selector in a whole document, in order;
/// `None` where nothing matches.
pub fn extract_inner(
    document: &str,
    selectors: &[String],
) -> Result<Vec<Option<String>>, SelectorError> {
    let doc = Html::parse_document(document);
    selectors
        .iter()
        .map(|s| Ok(doc.select(&selector(s)?).next().map(|e| e.inner_html())))
        .collect()
}

/// The operation for `morph(selector, html)`: when `html` contains an element matching
/// `selector`, a `morph` of that element's children; otherwise `innerHtml` with the string.
pub fn selector_operation(sel: &str, html: &str) -> Result<Operation, SelectorError> {
    let parsed = selector(sel)?;
    let fragment = Html::parse_fragment(html);
    Ok(match fragment.select(&parsed).next() {
        Some(el) => Operation::morph(sel, &el.inner_html()),
        None => Operation::inner_html(sel, html),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = r#"<!doctype html><html><head><title>t</title></head><body class="x">
        <div id="counter"><span>3</span></div><ul id="list"><li>a<li>b</ul><input id="i"><p id="empty"></p></body></html>"#;

    #[test]
    fn extracts_inner_html_of_the_first_match() {
        let got = extract_inner(
            PAGE,
            &[
                "#counter".into(),
                "#list".into(),
                "#missing".into(),
                "#empty".into(),
            ],
        )
        .unwrap();
        assert_eq!(got[0].as_deref(), Some("<span>3</span>"));
        assert_eq!(
            got[1].as_deref(),
            Some("<li>a</li><li>b</li>"),
            "implicitly closed elements"
        );
        assert_eq!(got[2], None);
        assert_eq!(got[3].as_deref(), Some(""));
        let body = extract_inner(PAGE, &["body".into()]).unwrap();
        assert!(body[0].as_ref().unwrap().contains(r#"<div id="counter">"#));
    }

    #[test]
    fn selector_morph_picks_morph_or_inner_html() {
        let op = selector_operation("#counter", r#"<div id="counter"><b>4</b></div>"#).unwrap();
        assert_eq!(
            (op.name(), op.0["html"].as_str()),
            ("morph", Some("<b>4</b>"))
        );
        assert_eq!(op.0["childrenOnly"], true);
        let op = selector_operation("#count", "5").unwrap();
        assert_eq!((op.name(), op.0["html"].as_str()), ("innerHtml", Some("5")));
        assert!(op.0.get("childrenOnly").is_none());
    }

    #[test]
    fn bad_selectors_are_typed_errors() {
        assert!(extract_inner(PAGE, &["#".into()]).is_err());
        assert!(selector_operation("[[", "x").is_err());
    }
}

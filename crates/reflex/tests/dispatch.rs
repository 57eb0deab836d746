//! The dispatcher end to end, without sockets: payload in, envelope out.
#![allow(missing_docs)]

use std::sync::Arc;

use ferrocable_node::Identity;
use ferrocable_reflex::{
    Halt, Operation, PageRequest, Reflex, ReflexContext, ReflexError, ReflexHost, Registry,
    SessionChange, dispatch,
};
use parking_lot::Mutex;
use serde_json::{Map, Value, json};

/// An app with one session and one page (`#counter` shows the session's count).
#[derive(Default)]
struct App {
    session: Mutex<Map<String, Value>>,
    fail_commit: bool,
}

impl ReflexHost for App {
    async fn load_session(&self, _: Option<&str>) -> Result<Map<String, Value>, String> {
        Ok(self.session.lock().clone())
    }
    async fn commit_session(
        &self,
        _: Option<&str>,
        mut changes: Vec<SessionChange>,
    ) -> Result<(), String> {
        if self.fail_commit {
            return Err("store down".into());
        }
        let mut s = self.session.lock();
        for c in changes.iter_mut() {
            c(&mut s);
        }
        Ok(())
    }
    async fn render_page(&self, page: PageRequest<'_>) -> Result<String, String> {
        let url = page.url;
        let count = self
            .session
            .lock()
            .get("count")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        Ok(format!(
            r#"<!doctype html><html><body data-url="{url}"><div id="counter"><b>{count}</b></div><p id="note">n</p></body></html>"#
        ))
    }
}

struct Counter;

impl Reflex for Counter {
    fn methods(&self) -> &'static [(&'static str, usize, usize)] {
        &[
            ("increment", 0, 1),
            ("reset", 0, 0),
            ("quiet", 0, 0),
            ("guarded", 0, 0),
            ("explode", 0, 0),
            ("mixed", 0, 0),
            ("extras", 0, 0),
        ]
    }
    async fn before(&self, ctx: &mut ReflexContext) -> Result<(), Halt> {
        if ctx.data().method == "guarded" {
            ctx.update_session(|s| {
                s.insert("guard_ran".into(), json!(true));
            });
            return Err(if ctx.element().data("guard") == Some("forbid") {
                Halt::Forbidden
            } else {
                Halt::Abort
            });
        }
        Ok(())
    }
    async fn call(&self, method: &str, ctx: &mut ReflexContext) -> Result<(), ReflexError> {
        match method {
            "increment" => {
                let step = ctx.args().first().and_then(Value::as_i64).unwrap_or(1);
                ctx.update_session(move |s| {
                    let n = s.get("count").and_then(Value::as_i64).unwrap_or(0);
                    s.insert("count".into(), json!(n + step));
                });
                Ok(())
            }
            "reset" => {
                ctx.morph("#counter", r#"<div id="counter"><b>0</b></div>"#)?;
                ctx.morph("#note", "plain text")
            }
            "quiet" => ctx.morph_nothing(),
            "explode" => {
                ctx.update_session(|s| {
                    s.insert("before_error".into(), json!(1));
                });
                Err(ReflexError::failed("boom"))
            }
            "mixed" => {
                ctx.morph("#a", "x")?;
                ctx.morph_nothing()
            }
            "extras" => {
                ctx.set_payload(json!({"ok": 1}));
                ctx.cable_ready(Operation::console_log("after", "info"));
                ctx.cable_ready_now(Operation::console_log("now", "info"));
                ctx.broadcast("others", vec![Operation::remove("#x")]);
                ctx.morph_nothing()
            }
            _ => Ok(()),
        }
    }
}

fn registry() -> Registry {
    Registry::new().reflex("Counter", Counter)
}

fn payload(target: &str) -> Value {
    json!({"id": "r-1", "target": target, "args": [], "url": "http://127.0.0.1:3000/?x=1",
           "selectors": ["#counter"], "formData": "", "version": "3.5.5", "tabId": "t1",
           "attrs": {"id": "b", "tag_name": "BUTTON"}, "dataset": {"dataset": {}, "datasetAll": {}},
           "inner_html": "", "xpathController": "//*[@id='b']", "xpathElement": "//*[@id='b']",
           "reflexController": "stimulus-reflex", "permanentAttributeName": "data-reflex-permanent"})
}

async fn run(app: &App, p: Value) -> ferrocable_reflex::Dispatched {
    dispatch(
        &registry(),
        app,
        Arc::new(Identity::anonymous().with_session("s1")),
        None,
        p,
        1024,
    )
    .await
}

fn ops(d: &ferrocable_reflex::Dispatched) -> Vec<Value> {
    let v = d.reply.as_ref().expect("a reply").to_value();
    assert_eq!(v["cableReady"], true);
    assert_eq!(v["version"], "5.0.6");
    v["operations"].as_array().unwrap().clone()
}

fn terminal(d: &ferrocable_reflex::Dispatched) -> (String, Value) {
    let ops = ops(d);
    let last = ops.last().unwrap().clone();
    assert_eq!(last["operation"], "dispatchEvent");
    assert_eq!(last["selector"], Value::Null);
    (last["name"].as_str().unwrap().to_owned(), last)
}

#[tokio::test]
async fn page_morph_renders_after_the_session_commit_and_cuts_the_selectors() {
    let app = App::default();
    let d = run(&app, payload("Counter#increment")).await;
    let ops = ops(&d);
    assert_eq!(ops.len(), 1);
    let op = &ops[0];
    assert_eq!(op["operation"], "morph");
    assert_eq!(op["selector"], "#counter");
    assert_eq!(
        op["html"], "<b>1</b>",
        "inner HTML of the re-rendered page, session committed first"
    );
    assert_eq!(op["childrenOnly"], true);
    assert_eq!(op["permanentAttributeName"], "data-reflex-permanent");
    assert_eq!(op["reflexId"], "r-1");
    assert_eq!(op["payload"], json!({}));
    let echo = &op["stimulusReflex"];
    assert_eq!(echo["morph"], "page");
    assert_eq!(echo["url"], "http://127.0.0.1:3000/?x=1");
    for key in [
        "id",
        "target",
        "xpathController",
        "xpathElement",
        "reflexController",
        "tabId",
    ] {
        assert!(echo.get(key).is_some(), "echo has {key}");
    }
    assert_eq!(echo["attrs"]["tagName"], "BUTTON");
    assert_eq!(echo["innerHtml"], "");
    assert_eq!(app.session.lock()["count"], 1);
}

#[tokio::test]
async fn no_selectors_means_body_and_arguments_reach_the_method() {
    let app = App::default();
    let mut p = payload("Counter#increment");
    p["selectors"] = json!([]);
    p["args"] = json!([5]);
    let ops = ops(&run(&app, p).await);
    assert_eq!(ops[0]["selector"], "body");
    assert!(
        ops[0]["html"]
            .as_str()
            .unwrap()
            .contains("<div id=\"counter\"><b>5</b></div>")
    );
}

#[tokio::test]
async fn selector_morphs_morph_or_set_inner_html_and_tag_every_op() {
    let app = App::default();
    let ops = ops(&run(&app, payload("Counter#reset")).await);
    assert_eq!(ops.len(), 2);
    assert_eq!(
        (ops[0]["operation"].as_str(), ops[0]["html"].as_str()),
        (Some("morph"), Some("<b>0</b>"))
    );
    assert_eq!(
        (ops[1]["operation"].as_str(), ops[1]["html"].as_str()),
        (Some("innerHtml"), Some("plain text"))
    );
    assert!(ops[1].get("childrenOnly").is_none());
    for op in &ops {
        assert_eq!(op["stimulusReflex"]["morph"], "selector");
        assert_eq!(op["reflexId"], "r-1");
    }
}

#[tokio::test]
async fn nothing_morph() {
    let (name, op) = terminal(&run(&App::default(), payload("Counter#quiet")).await);
    assert_eq!(name, "stimulus-reflex:morph-nothing");
    assert_eq!(op["stimulusReflex"]["morph"], "nothing");
}

#[tokio::test]
async fn before_callbacks_halt_or_forbid_and_what_they_did_stands() {
    let app = App::default();
    let (name, _) = terminal(&run(&app, payload("Counter#guarded")).await);
    assert_eq!(name, "stimulus-reflex:morph-halted");
    assert_eq!(app.session.lock()["guard_ran"], true);
    let mut p = payload("Counter#guarded");
    p["dataset"]["dataset"]["data-guard"] = json!("forbid");
    let (name, _) = terminal(&run(&app, p).await);
    assert_eq!(name, "stimulus-reflex:morph-forbidden");
}

#[tokio::test]
async fn errors_are_morph_error_with_the_message_and_the_session_is_still_committed() {
    let app = App::default();
    let d = run(&app, payload("Counter#explode")).await;
    let (name, op) = terminal(&d);
    assert_eq!(name, "stimulus-reflex:morph-error");
    assert_eq!(op["error"], "boom");
    assert_eq!(op["stimulusReflex"]["morph"], "page");
    assert_eq!(app.session.lock()["before_error"], 1);
    let (_, op) = terminal(&run(&app, payload("Counter#mixed")).await);
    assert_eq!(
        op["error"],
        "cannot switch the morph mode from selector to nothing"
    );
}

#[tokio::test]
async fn only_allow_listed_targets_run_and_every_refusal_ends_the_reflex() {
    let app = App::default();
    let cases = [
        ("Nope#increment", "unknown reflex Nope#increment"),
        (
            "Counter#drop_database",
            "Counter#drop_database is not an allowed reflex method",
        ),
        (
            "Counter#methods",
            "Counter#methods is not an allowed reflex method",
        ),
    ];
    for (target, message) in cases {
        let (name, op) = terminal(&run(&app, payload(target)).await);
        assert_eq!(name, "stimulus-reflex:morph-error", "{target}");
        assert_eq!(op["error"], message);
        assert_eq!(op["reflexId"], "r-1");
    }
    let mut p = payload("Counter#reset");
    p["args"] = json!([1, 2]);
    let (_, op) = terminal(&run(&app, p).await);
    assert_eq!(
        op["error"],
        "wrong number of arguments (given 2, expected 0) for Counter#reset"
    );
    let mut p = payload("Counter#increment");
    p["formData"] = json!("a=".to_owned() + &"x".repeat(2000));
    let (_, op) = terminal(&run(&app, p).await);
    assert!(
        op["error"]
            .as_str()
            .unwrap()
            .starts_with("formData of 2002 bytes exceeds")
    );
    let (_, op) = terminal(&run(&app, json!({"id": "r-2", "target": "bad target"})).await);
    assert_eq!(op["reflexId"], "r-2");
    assert!(app.session.lock().is_empty(), "nothing ran");
    assert!(
        run(&app, json!({"target": "Counter#increment"}))
            .await
            .reply
            .is_none(),
        "no id: nothing to answer"
    );
}

#[tokio::test]
async fn a_version_mismatch_is_reported_untagged_and_nothing_runs() {
    let app = App::default();
    let mut p = payload("Counter#increment");
    p["version"] = json!("3.5.4");
    let ops = ops(&run(&app, p).await);
    assert_eq!(ops[0]["operation"], "consoleLog");
    assert_eq!(ops[1]["name"], "stimulus-reflex:version-mismatch");
    assert!(
        ops.iter()
            .all(|o| o.get("stimulusReflex").is_none() && o["reflexId"] == "r-1")
    );
    assert!(app.session.lock().is_empty());
}

#[tokio::test]
async fn selectors_missing_from_the_render_end_with_an_error_not_a_hang() {
    let mut p = payload("Counter#increment");
    p["selectors"] = json!(["#gone"]);
    let (name, op) = terminal(&run(&App::default(), p).await);
    assert_eq!(name, "stimulus-reflex:morph-error");
    assert!(op["error"].as_str().unwrap().contains("#gone"));
}

#[tokio::test]
async fn a_failed_session_commit_is_a_morph_error() {
    let app = App {
        fail_commit: true,
        ..Default::default()
    };
    let (name, op) = terminal(&run(&app, payload("Counter#increment")).await);
    assert_eq!(name, "stimulus-reflex:morph-error");
    assert!(
        op["error"]
            .as_str()
            .unwrap()
            .starts_with("session store unavailable")
    );
}

#[tokio::test]
async fn piggyback_immediate_broadcast_and_payload() {
    let d = run(&App::default(), payload("Counter#extras")).await;
    let ops = ops(&d);
    assert_eq!(
        ops[0]["operation"], "consoleLog",
        "queued ops first, untagged"
    );
    assert!(ops[0].get("stimulusReflex").is_none());
    assert_eq!(ops[1]["payload"], json!({"ok": 1}));
    let now = d.immediate.unwrap().to_value();
    assert_eq!(now["operations"][0]["reflexId"], "r-1");
    assert_eq!(d.broadcasts[0].0, "others");
}

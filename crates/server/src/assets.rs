//! Static files for the browser: the pinned npm packages a reactive page needs (served from
//! the app's `node_modules`, unmodified, under `/vendor/…`), the import map that names them,
//! ferrocable's own start-up module, and the app's own files.
//!
//! Only files loaded at start are served, looked up by exact name: nothing else on disk is
//! reachable through these routes.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use axum::Router;
use axum::body::Body;
use axum::extract::Path as UrlPath;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use tracing::warn;

/// Browser packages served as one file: import name, file under `/vendor/`, file inside
/// `node_modules`.
const SINGLE_FILES: &[(&str, &str, &str)] = &[
    (
        "@hotwired/stimulus",
        "stimulus.js",
        "@hotwired/stimulus/dist/stimulus.js",
    ),
    (
        "@hotwired/turbo",
        "turbo.js",
        "@hotwired/turbo/dist/turbo.es2017-esm.js",
    ),
    (
        "@hotwired/turbo-rails",
        "turbo-rails.js",
        "@hotwired/turbo-rails/app/assets/javascripts/turbo.js",
    ),
    (
        "@rails/actioncable",
        "actioncable.esm.js",
        "@rails/actioncable/app/assets/javascripts/actioncable.esm.js",
    ),
    (
        "morphdom",
        "morphdom-esm.js",
        "morphdom/dist/morphdom-esm.js",
    ),
    (
        "cable_ready",
        "cable_ready.js",
        "cable_ready/dist/cable_ready.js",
    ),
    (
        "stimulus_reflex",
        "stimulus_reflex.js",
        "stimulus_reflex/dist/stimulus_reflex.js",
    ),
];

/// Packages served whole under `/vendor/pkg/<package>/…` (ES modules with relative imports):
/// `@anycable/web`, its core and its one dependency.
const WHOLE_PACKAGES: &[&str] = &["@anycable/web", "@anycable/core", "nanoevents"];

/// What a reflex page cannot work without (the rest is optional).
const REFLEX_PACKAGES: &[&str] = &[
    "@hotwired/stimulus",
    "@rails/actioncable",
    "morphdom",
    "cable_ready",
    "stimulus_reflex",
];

/// ferrocable's start-up module (`import "ferrocable"`): Stimulus, the Action Cable consumer
/// (at the page's `action-cable-url`), CableReady and StimulusReflex, started once.
const BOOT_MODULE: &str = r#"// ferrocable: starts Stimulus, the cable consumer, CableReady and StimulusReflex.
import { Application } from "@hotwired/stimulus"
import { createConsumer } from "@rails/actioncable"
import CableReady from "cable_ready"
import StimulusReflex from "stimulus_reflex"

export const application = Application.start()
export const consumer = createConsumer()
application.consumer = consumer
CableReady.initialize({ consumer })
StimulusReflex.initialize(application, { isolate: true, deprecate: false })
window.ferrocable = { application, consumer }
"#;

/// A file served as is.
#[derive(Clone)]
struct File {
    body: Bytes,
    content_type: &'static str,
}

/// The browser files a server serves. Build one with [`Assets::new`], add the npm packages
/// with [`Assets::browser_packages`] and the app's own files with [`Assets::file`].
#[derive(Clone, Default)]
pub struct Assets {
    /// Files under `/vendor/` by name.
    vendor: HashMap<String, File>,
    /// The app's files by URL path.
    files: BTreeMap<String, File>,
    /// Import name → URL.
    imports: BTreeMap<String, String>,
    /// Where the packages were looked for (for the warning).
    node_modules: Option<PathBuf>,
}

impl std::fmt::Debug for Assets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Assets")
            .field("imports", &self.imports.keys().collect::<Vec<_>>())
            .field("files", &self.files.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Deepest folder a package is searched (published packages are a few levels deep).
const MAX_DEPTH: usize = 8;

/// Every `.js` file under `dir`, as paths relative to `root`. Symbolic links to folders are
/// not followed (a linked workspace package could loop) and the walk stops at [`MAX_DEPTH`].
fn js_files(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
    js_files_at(root, dir, out, 0);
}

fn js_files_at(root: &Path, dir: &Path, out: &mut Vec<PathBuf>, depth: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            if depth < MAX_DEPTH && path.file_name().is_some_and(|n| n != "node_modules") {
                js_files_at(root, &path, out, depth + 1);
            }
        } else if path.extension().is_some_and(|e| e == "js")
            && let Ok(rel) = path.strip_prefix(root)
        {
            out.push(rel.to_path_buf());
        }
    }
}

const JS: &str = "text/javascript; charset=utf-8";

impl Assets {
    /// ferrocable's own start-up module and nothing else.
    pub fn new() -> Self {
        let mut assets = Assets::default();
        assets.vendor.insert(
            "ferrocable.js".into(),
            File {
                body: Bytes::from_static(BOOT_MODULE.as_bytes()),
                content_type: JS,
            },
        );
        assets
            .imports
            .insert("ferrocable".into(), "/vendor/ferrocable.js".into());
        assets
    }

    /// Adds the browser packages found in `node_modules` (what `npm install` made of the app's
    /// `package.json`): Stimulus, Turbo, `@rails/actioncable`, morphdom, CableReady,
    /// StimulusReflex and `@anycable/web`, each only if installed. A missing reflex package is
    /// named in the log with the command that installs it.
    pub fn browser_packages(mut self, node_modules: impl AsRef<Path>) -> Self {
        let dir = node_modules.as_ref();
        for (import, name, rel) in SINGLE_FILES {
            if let Ok(body) = std::fs::read(dir.join(rel)) {
                self.vendor.insert(
                    (*name).to_owned(),
                    File {
                        body: Bytes::from(body),
                        content_type: JS,
                    },
                );
                self.imports
                    .insert((*import).to_owned(), format!("/vendor/{name}"));
            }
        }
        for package in WHOLE_PACKAGES {
            let mut files = Vec::new();
            js_files(dir, &dir.join(package), &mut files);
            for rel in files {
                if let (Ok(body), Some(key)) = (std::fs::read(dir.join(&rel)), rel.to_str()) {
                    self.vendor.insert(
                        format!("pkg/{key}"),
                        File {
                            body: Bytes::from(body),
                            content_type: JS,
                        },
                    );
                }
            }
            if self.vendor.contains_key(&format!("pkg/{package}/index.js")) {
                self.imports.insert(
                    (*package).to_owned(),
                    format!("/vendor/pkg/{package}/index.js"),
                );
            }
        }
        let missing = self.missing_reflex_packages();
        if !missing.is_empty() {
            warn!(dir = %dir.display(), ?missing, "browser packages missing: reflex pages will not run (npm install in the app's folder)");
        }
        self.node_modules = Some(dir.to_path_buf());
        self
    }

    /// Adds one of the app's files at `path` (`/assets/app.css`).
    pub fn file(
        mut self,
        path: impl Into<String>,
        body: impl Into<Bytes>,
        content_type: &'static str,
    ) -> Self {
        self.files.insert(
            path.into(),
            File {
                body: body.into(),
                content_type,
            },
        );
        self
    }

    /// Maps an extra import name to a URL in the import map (an app's own module).
    pub fn import(mut self, name: impl Into<String>, url: impl Into<String>) -> Self {
        self.imports.insert(name.into(), url.into());
        self
    }

    /// The reflex packages that were not found.
    pub fn missing_reflex_packages(&self) -> Vec<&'static str> {
        REFLEX_PACKAGES
            .iter()
            .filter(|p| !self.imports.contains_key(**p))
            .copied()
            .collect()
    }

    /// The import map JSON (`{"imports":{…}}`) of every package loaded.
    pub fn import_map(&self) -> String {
        serde_json::json!({ "imports": self.imports }).to_string()
    }

    /// The routes that serve these files (the server mounts them; a page server of its own,
    /// such as a test app standing in for Rails, can mount them too).
    pub fn routes(&self) -> Router {
        let vendor = std::sync::Arc::new(self.vendor.clone());
        let mut router = Router::new().route(
            "/vendor/{*file}",
            get(move |UrlPath(file): UrlPath<String>| {
                let vendor = vendor.clone();
                async move {
                    match vendor.get(file.as_str()) {
                        Some(f) => serve(f.clone()),
                        None => (StatusCode::NOT_FOUND, "not found\n").into_response(),
                    }
                }
            }),
        );
        for (path, file) in &self.files {
            let file = file.clone();
            router = router.route(path, get(move || async move { serve(file) }));
        }
        router
    }
}

fn serve(file: File) -> Response {
    let mut r = Response::new(Body::from(file.body));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(file.content_type),
    );
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_installed_packages_enter_the_import_map() {
        let dir = std::env::temp_dir().join(format!(
            "ferrocable-assets-{}",
            ferrocable_session::new_session_id()
        ));
        let file = dir.join("cable_ready/dist/cable_ready.js");
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, "export default {}").unwrap();
        let assets = Assets::new().browser_packages(&dir);
        let map: serde_json::Value = serde_json::from_str(&assets.import_map()).unwrap();
        assert_eq!(map["imports"]["cable_ready"], "/vendor/cable_ready.js");
        assert_eq!(map["imports"]["ferrocable"], "/vendor/ferrocable.js");
        assert!(map["imports"].get("stimulus_reflex").is_none());
        assert!(
            assets
                .missing_reflex_packages()
                .contains(&"stimulus_reflex")
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_linked_package_folder_that_loops_is_not_followed() {
        let dir = std::env::temp_dir().join(format!(
            "ferrocable-assets-loop-{}",
            ferrocable_session::new_session_id()
        ));
        let pkg = dir.join("nanoevents");
        std::fs::create_dir_all(&pkg).unwrap();
        std::fs::write(pkg.join("index.js"), "export {}").unwrap();
        std::os::unix::fs::symlink(&pkg, pkg.join("again")).unwrap();
        let assets = Assets::new().browser_packages(&dir);
        let map: serde_json::Value = serde_json::from_str(&assets.import_map()).unwrap();
        assert_eq!(
            map["imports"]["nanoevents"],
            "/vendor/pkg/nanoevents/index.js"
        );
        assert_eq!(
            assets.vendor.len(),
            2,
            "ferrocable.js and index.js, nothing through the link"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}

//! A live dashboard of the node itself: connections, subscriptions, messages delivered per
//! second and reflex latency, read from the node's own metrics once a second and pushed to
//! every open dashboard as CableReady operations (a table and a small SVG chart). The
//! "Run a reflex" button gives the latency figure something to measure.
//!
//! `npm ci --prefix crates/ferrocable && cargo run --example dashboard`, then open
//! <http://127.0.0.1:3000/>.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::time::Duration;

use ferrocable::axum::{response::Html, routing::get};
use ferrocable::{
    App, Cable, Metrics, Node, Operation, Reflex, ReflexContext, ReflexError, broadcast_operations,
};

/// The stream dashboards listen to.
const STREAM: &str = "dashboard";
/// Samples kept for the chart (one a second).
const WINDOW: usize = 60;

/// One second of the node's life.
#[derive(Clone, Copy, Default)]
struct Sample {
    connections: i64,
    subscriptions: i64,
    /// Frames delivered to subscribers in the last second.
    deliveries_per_sec: u64,
    /// Mean reflex time in the last second, if any ran.
    reflex_ms: Option<f64>,
}

/// What the previous reading of the counters was, to turn totals into rates.
#[derive(Default)]
struct Totals {
    deliveries: u64,
    reflexes: u64,
    reflex_seconds: f64,
}

fn read(metrics: &Metrics, last: &mut Totals) -> Sample {
    let deliveries = metrics.broadcast_deliveries.get();
    let (reflexes, reflex_time) = metrics.reflex_totals();
    let reflex_seconds = reflex_time.as_secs_f64();
    let ran = reflexes.saturating_sub(last.reflexes);
    let sample = Sample {
        connections: metrics.connections.get(),
        subscriptions: metrics.subscriptions.get(),
        deliveries_per_sec: deliveries.saturating_sub(last.deliveries),
        reflex_ms: (ran > 0).then(|| (reflex_seconds - last.reflex_seconds) * 1000.0 / ran as f64),
    };
    *last = Totals {
        deliveries,
        reflexes,
        reflex_seconds,
    };
    sample
}

fn stats_html(s: &Sample) -> String {
    let latency = s
        .reflex_ms
        .map_or_else(|| "–".to_owned(), |ms| format!("{ms:.2} ms"));
    format!(
        r#"<div class="figure"><span>connections</span><b id="connections">{}</b></div>
<div class="figure"><span>subscriptions</span><b id="subscriptions">{}</b></div>
<div class="figure"><span>messages / s</span><b id="rate">{}</b></div>
<div class="figure"><span>reflex latency</span><b id="latency">{latency}</b></div>"#,
        s.connections, s.subscriptions, s.deliveries_per_sec
    )
}

/// Messages per second over the window as an SVG polyline, scaled to the highest point.
fn chart_svg(samples: &VecDeque<Sample>) -> String {
    let (w, h) = (600.0, 120.0);
    let top = samples
        .iter()
        .map(|s| s.deliveries_per_sec)
        .max()
        .unwrap_or(0)
        .max(1);
    let mut points = String::new();
    for (i, s) in samples.iter().enumerate() {
        let x = i as f64 * w / (WINDOW - 1) as f64;
        let y = h - 4.0 - s.deliveries_per_sec as f64 * (h - 8.0) / top as f64;
        let _ = write!(points, "{x:.1},{y:.1} ");
    }
    format!(
        r##"<p class="label">messages delivered per second, last {WINDOW} s (peak {top})</p>
<svg id="chart-svg" viewBox="0 0 {w} {h}" preserveAspectRatio="none"><polyline id="line" fill="none" stroke="#2563eb" stroke-width="2" vector-effect="non-scaling-stroke" points="{}"/></svg>"##,
        points.trim_end()
    )
}

/// Reads the metrics every second and redraws every dashboard.
async fn sample_forever(node: Node) {
    let mut last = Totals::default();
    let mut samples = VecDeque::with_capacity(WINDOW);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let sample = read(node.metrics(), &mut last);
        if samples.len() == WINDOW {
            samples.pop_front();
        }
        samples.push_back(sample);
        broadcast_operations(
            &node,
            STREAM,
            vec![
                Operation::inner_html("#stats", &stats_html(&sample)),
                Operation::inner_html("#chart", &chart_svg(&samples)),
            ],
        );
    }
}

/// `Dashboard#ping`: a reflex that does nothing, so there is a latency to show.
struct Dashboard;

impl Reflex for Dashboard {
    fn methods(&self) -> &'static [(&'static str, usize, usize)] {
        &[("ping", 0, 0)]
    }

    async fn call(&self, _method: &str, ctx: &mut ReflexContext) -> Result<(), ReflexError> {
        ctx.morph_nothing()
    }
}

async fn page(cable: Cable) -> Html<String> {
    let stream = cable.signed_stream(STREAM);
    Html(format!(
        r#"<!doctype html>
<html><head><title>Dashboard</title>{head}
<style>
body {{ font: 15px/1.4 system-ui, sans-serif; margin: 2rem auto; max-width: 640px; color: #111827; }}
#stats {{ display: grid; grid-template-columns: repeat(4, 1fr); gap: .75rem; margin: 1rem 0; }}
.figure {{ background: #f3f4f6; border-radius: .5rem; padding: .75rem; }}
.figure span {{ display: block; color: #6b7280; font-size: .8rem; }}
.figure b {{ font-size: 1.5rem; font-variant-numeric: tabular-nums; }}
#chart svg {{ width: 100%; height: 120px; background: #f9fafb; border: 1px solid #e5e7eb; border-radius: .5rem; }}
.label {{ color: #6b7280; font-size: .8rem; margin: 0 0 .25rem; }}
</style></head>
<body><h1>This node</h1>
<cable-ready-stream-from identifier="{stream}"></cable-ready-stream-from>
<div id="stats">{stats}</div>
<div id="chart"></div>
<button id="ping" data-reflex="click->Dashboard#ping">Run a reflex</button>
</body></html>"#,
        head = cable.head(),
        stats = stats_html(&Sample::default()),
    ))
}

fn main() -> Result<(), ferrocable::Error> {
    App::new()
        .browser_packages(concat!(env!("CARGO_MANIFEST_DIR"), "/node_modules"))
        .route("/", get(page))
        .reflex("Dashboard", Dashboard)
        .on_start(|node, _| {
            tokio::spawn(sample_forever(node.clone()));
        })
        .run()
}

//! The `scale` scenario: the read routes and `/apply` on a database of real
//! size (by default 1,000 users, 100,000 applications, 1,000,000 analytics
//! events), each against its DB ceiling at that size in the same run, and the
//! growth curve of `/status` at 1k, 10k and 100k applications.
//!
//! Seeding is bulk (`insert_many` of 10,000 documents at a time). The probe
//! users whose tokens wrk sends each hold [`PROBE_APPLICATIONS`] applications
//! at every size, so the curve shows what the collection's size costs, not a
//! longer answer; the rest belong to filler users.

use std::{fmt::Write as _, sync::Arc, time::Instant};

use finapp_broker::Publisher;
use finapp_shared::{
    auth::{Role, TokenKeys},
    finance::PageRequest,
    store::{FINANCING_CHECK_MARKER, LOGIN_MARKER, Store, collections},
};
use mongodb::bson::{DateTime, Document, doc};
use secrecy::ExposeSecret as _;

use crate::{
    ceilings,
    error::Result,
    fixture::{Space, mongo, prepare},
    scenarios::Bench,
    stats::Figure,
    wrk::Script,
};

/// The function binaries this scenario runs.
pub const FUNCTIONS: [&str; 5] = [
    "status",
    "dashboard-info",
    "admin-applications",
    "analytics",
    "apply",
];

/// Applications of each probe user, at every size.
pub const PROBE_APPLICATIONS: usize = 25;
const PROBE_USERS: usize = 16;
const BATCH: usize = 10_000;
const PER_PAGE: u64 = 10;
const DEEP_PAGE: u64 = 1_000;
const ADMIN_FIRST: &str = "GET /admin/applications page 1";
const ADMIN_DEEP: &str = "GET /admin/applications page 1,000";
/// How long to wait for the machine to quiet down after the admin pages.
const SETTLE: std::time::Duration = std::time::Duration::from_secs(30);

/// One route at the full size: wrk against the function, and the same
/// database work from the bench's own tasks, `BENCH_RUNS` times in turn.
/// `achieved` and `ceiling` are the run whose ratio is the median.
#[derive(Clone, Debug)]
pub struct Row {
    pub route: String,
    pub achieved: Figure,
    pub ceiling: Figure,
    /// Every run's achieved / ceiling, in percent, in the order run.
    pub ratios: Vec<f64>,
}

impl Row {
    /// The row of `runs` (achieved, ceiling) pairs: the median run's figures.
    fn of(route: &str, runs: Vec<(Figure, Figure)>) -> Self {
        let ratios: Vec<f64> = runs
            .iter()
            .map(|(achieved, ceiling)| percent_of(achieved.rps, ceiling.rps))
            .collect();
        let mut order: Vec<usize> = (0..runs.len()).collect();
        order.sort_by(|&a, &b| ratios[a].total_cmp(&ratios[b]));
        let (achieved, ceiling) = runs[order[order.len() / 2]];
        Self {
            route: route.to_owned(),
            achieved,
            ceiling,
            ratios,
        }
    }
}

#[derive(Clone, Debug)]
pub struct GrowthPoint {
    pub applications: usize,
    pub achieved: Figure,
    pub ceiling: Figure,
    /// `/admin/applications` at this size: page 1 and the deep page.
    pub admin: Option<AdminPages>,
}

#[derive(Clone, Debug)]
pub struct AdminPages {
    pub deep_page: u64,
    pub first: Figure,
    pub deep: Figure,
}

/// A route of the full-size table: its label, function, path, wrk script and
/// the ceiling to measure just before it.
type Route<'a> = (
    &'static str,
    &'static str,
    String,
    Script,
    Box<dyn Fn() -> Figure + 'a>,
);

#[derive(Clone, Debug)]
pub struct Scale {
    pub users: usize,
    pub applications: usize,
    pub events: usize,
    pub seed_secs: f64,
    pub duration_secs: u64,
    /// Runs of each row (route, then ceiling, in turn).
    pub runs: usize,
    pub connections: usize,
    pub rows: Vec<Row>,
    pub growth: Vec<GrowthPoint>,
    /// One `/analytics` computed as before the counters (four scans of the
    /// events), timed once; `None` if it took longer than [`BEFORE_TIMEOUT`].
    pub analytics_before: Option<std::time::Duration>,
}

const BEFORE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(180);

/// A space seeded with `applications` applications (16 probe users with 25
/// each, the rest spread over `users` filler users) and `events` events with
/// their counters; returns the store and the probe users.
async fn seed(
    bench: &Bench<'_>,
    purpose: &str,
    users: usize,
    applications: usize,
    events: usize,
) -> Result<(Space, Store, Vec<String>)> {
    let space = Space::new(&bench.fixture.run, purpose);
    let store = prepare(&bench.fixture.config_in(&space)?).await?;
    let now = DateTime::now();
    let probes: Vec<String> = (0..PROBE_USERS).map(|i| format!("probe_{i:02}")).collect();
    let application = |i: usize, user: &str| {
        let status = ["pending", "approved", "denied"][i % 3];
        doc! {
            "loan_types": ["personal"], "amount": 15_000.0 + i as f64, "purpose": "Car purchase",
            "status": status, "submitted_by": user, "submitted_at": now,
            "status_history": [{ "status": "pending", "by": user, "at": now }],
        }
    };
    let documents = store
        .database()
        .collection::<Document>(collections::APPLICATIONS);
    let probe_count = (PROBE_USERS * PROBE_APPLICATIONS).min(applications);
    let all: Vec<Document> = (0..applications)
        .map(|i| {
            if i < probe_count {
                application(i, &probes[i % PROBE_USERS])
            } else {
                application(i, &format!("user_{:04}", i % users.max(1)))
            }
        })
        .collect();
    for chunk in all.chunks(BATCH) {
        documents.insert_many(chunk).await?;
    }
    // Users: the filler users, the probes and one admin. User routes refuse
    // a token whose user does not exist, and the admin routes look the caller up.
    let people: Vec<Document> = (0..users)
        .map(|i| format!("user_{i:04}"))
        .chain(probes.iter().cloned())
        .map(|username| doc! { "username": username, "password": "x" })
        .collect();
    for chunk in people.chunks(BATCH) {
        store
            .database()
            .collection::<Document>(collections::USERS)
            .insert_many(chunk)
            .await?;
    }
    store
        .upsert_admin("scale_admin", "x")
        .await
        .map_err(mongo)?;
    if events > 0 {
        seed_events(&store, users, events).await?;
    }
    Ok((space, store, probes))
}

/// `events` events in the original's shape plus a type, a third logins and a
/// third financing checks, and the counters they make (what the consumer
/// would have written; `rebuild_analytics_counters` gives the same).
async fn seed_events(store: &Store, users: usize, events: usize) -> Result<()> {
    let now = DateTime::now();
    let analytics = store
        .database()
        .collection::<Document>(collections::ANALYTICS);
    let mut counters: Vec<(i64, i64, i64)> = vec![(0, 0, 0); users];
    let mut batch = Vec::with_capacity(BATCH);
    for i in 0..events {
        let u = i % users;
        let text = match i % 3 {
            0 => format!("User user_{u:04} {LOGIN_MARKER}"),
            1 => format!("User user_{u:04} {FINANCING_CHECK_MARKER}"),
            _ => format!("Application by user_{u:04} for 1000.0"),
        };
        counters[u].0 += 1;
        counters[u].1 += i64::from(i % 3 == 0);
        counters[u].2 += i64::from(i % 3 == 1);
        batch.push(doc! {
            "_id": format!("seed-{i}"), "event_id": format!("seed-{i}"), "type": "user_activity",
            "username": format!("user_{u:04}"), "event": text, "timestamp": now, "received_at": now,
        });
        if batch.len() == BATCH {
            analytics.insert_many(std::mem::take(&mut batch)).await?;
        }
    }
    if !batch.is_empty() {
        analytics.insert_many(batch).await?;
    }
    let docs: Vec<Document> = counters
        .iter()
        .enumerate()
        .map(|(u, (n, logins, checks))| {
            doc! { "_id": format!("user_{u:04}"), "events": n, "logins": logins,
            "financing_checks": checks, "types": { "user_activity": n }, "recent": [] }
        })
        .collect();
    store
        .database()
        .collection::<Document>(collections::ANALYTICS_COUNTERS)
        .insert_many(docs)
        .await?;
    Ok(())
}

impl Bench<'_> {
    pub fn scale(&mut self) -> Result<Scale> {
        let settings = self.settings;
        let (users, applications, events) = (
            settings.scale_users,
            settings.scale_applications,
            settings.scale_events,
        );
        let started = Instant::now();
        eprintln!("[bench] seeding {users} users, {applications} applications, {events} events");
        let (space, store, probes) =
            self.runtime
                .block_on(seed(self, "scale", users, applications, events))?;
        let seed_secs = started.elapsed().as_secs_f64();
        eprintln!("[bench] seeded in {seed_secs:.0} s");
        let keys = TokenKeys::new(&self.fixture.config_in(&space)?);
        let tokens: Vec<String> = probes
            .iter()
            .map(|user| keys.issue(user, Role::User).expose_secret().to_owned())
            .collect();
        let admin = vec![
            keys.issue("scale_admin", Role::Admin)
                .expose_secret()
                .to_owned(),
        ];
        // `/apply` writes as the seeded users, each with its share of the
        // applications (a third of them pending), as real writers would be:
        // the route as the first half, its ceiling as the second, so neither
        // one's new applications are what the other's pending count reads.
        let (writers, ceiling_writers) = {
            let mut seeded: Vec<String> = (0..users).map(|i| format!("user_{i:04}")).collect();
            let second = seeded.split_off(users / 2);
            (seeded, second)
        };
        let writer_tokens: Vec<String> = writers
            .iter()
            .map(|user| keys.issue(user, Role::User).expose_secret().to_owned())
            .collect();

        let concurrency = settings.connections;
        let duration = settings.duration;
        let mut rows = Vec::new();
        let rt = self.runtime;
        let page = |n: u64| PageRequest {
            page: n,
            per_page: PER_PAGE,
        };
        let routes: Vec<Route> = vec![
            (
                "GET /status",
                "status",
                "/status".into(),
                Script::get("/status").with_tokens(&tokens),
                {
                    let (store, probes) = (store.clone(), probes.clone());
                    Box::new(move || {
                        rt.block_on(ceilings::status_queries(
                            &store,
                            &probes,
                            concurrency,
                            duration,
                        ))
                    })
                },
            ),
            (
                "GET /dashboard-info",
                "dashboard-info",
                "/dashboard-info".into(),
                Script::get("/dashboard-info").with_tokens(&tokens),
                {
                    let (store, probes) = (store.clone(), Arc::new(probes.clone()));
                    Box::new(move || {
                        let (store, probes) = (store.clone(), probes.clone());
                        rt.block_on(ceilings::closed_loop(
                            concurrency,
                            duration,
                            move |task, i| {
                                let (store, user) =
                                    (store.clone(), probes[(task + i) % probes.len()].clone());
                                async move { store.status_counts(&user).await.is_ok() }
                            },
                        ))
                    })
                },
            ),
            (
                "GET /analytics",
                "analytics",
                "/analytics".into(),
                Script::get("/analytics").with_tokens(&admin),
                {
                    let store = store.clone();
                    Box::new(move || {
                        let store = store.clone();
                        rt.block_on(ceilings::closed_loop(concurrency, duration, move |_, _| {
                            let store = store.clone();
                            async move {
                                // What the route does per request: the
                                // caller's role, then the cached summary.
                                store.find_user("scale_admin").await.is_ok()
                                    && store.analytics_summary_cached().await.is_ok()
                            }
                        }))
                    })
                },
            ),
        ];
        // The admin pages last: on a FerretDB without tools/ferretdb's
        // pushdown.patch each of their requests reads the whole collection,
        // and the reads of those wrk gave up on go on after it stops,
        // spoiling any figure measured next.
        let admin_routes: Vec<Route> = vec![
            (
                ADMIN_FIRST,
                "admin-applications",
                "/admin/applications?page=1&per_page=10".into(),
                Script::get("/admin/applications?page=1&per_page=10").with_tokens(&admin),
                {
                    let store = store.clone();
                    Box::new(move || admin_ceiling(rt, &store, page(1), concurrency, duration))
                },
            ),
            (
                ADMIN_DEEP,
                "admin-applications",
                "/admin/applications?page=1000&per_page=10".into(),
                Script::get("/admin/applications?page=1000&per_page=10").with_tokens(&admin),
                {
                    let store = store.clone();
                    Box::new(move || {
                        admin_ceiling(rt, &store, page(DEEP_PAGE), concurrency, duration)
                    })
                },
            ),
        ];
        self.measure_rows(&space, routes, &mut rows)?;
        {
            eprintln!("[bench] scale: POST /apply");
            let process = self.start("apply", &space)?;
            let load = self.saturate(
                &process,
                Script::post("/apply", crate::scenarios::APPLY_BODY.into())
                    .with_tokens(&writer_tokens),
            );
            self.record("scale", &load, "apply");
            self.warm_up(&load, "apply")?;
            let apply_config = self.fixture.config_in(&space)?;
            let events = Arc::new(Publisher::new(&apply_config));
            let mut runs = Vec::new();
            for _ in 0..settings.runs.max(1) {
                let ceiling = rt.block_on(ceilings::apply_writes(
                    &store,
                    &ceiling_writers,
                    &writer_tokens,
                    None,
                    ceilings::ApplyOps::Handler {
                        pending_cap: apply_config.accounts.max_pending_applications,
                        user_check_cache: apply_config.accounts.user_check_cache,
                    },
                    concurrency,
                    duration,
                ));
                runs.push((load.run(&settings.scratch, "apply")?, ceiling));
            }
            rt.block_on(events.close());
            process.stop()?;
            rows.push(Row::of("POST /apply", runs));
        }
        let mut growth = Vec::new();
        for &size in &settings.scale_growth {
            let (point_space, point_store, point_probes) = if size == applications {
                (space.clone(), store.clone(), probes.clone())
            } else {
                eprintln!("[bench] scale: seeding {size} applications for the growth curve");
                rt.block_on(seed(self, &format!("growth{size}"), users, size, 0))?
            };
            eprintln!("[bench] scale: GET /status at {size} applications");
            let process = self.start("status", &point_space)?;
            let load = self.saturate(&process, Script::get("/status").with_tokens(&tokens));
            self.warm_up(&load, "status")?;
            let ceiling = rt.block_on(ceilings::status_queries(
                &point_store,
                &point_probes,
                concurrency,
                duration,
            ));
            let achieved = load.run(&settings.scratch, "status")?;
            process.stop()?;
            // The full size's admin pages are the table's last rows.
            let admin = if size == applications {
                None
            } else {
                Some(self.admin_pages(&point_space, &admin, size)?)
            };
            growth.push(GrowthPoint {
                applications: size,
                achieved,
                ceiling,
                admin,
            });
            if size != applications && std::env::var_os("BENCH_KEEP_DATA").is_none() {
                let _ = rt.block_on(point_space.remove());
            }
        }
        self.measure_rows(&space, admin_routes, &mut rows)?;
        // Last of all: FerretDB goes on scanning after the bench gives up on it.
        eprintln!(
            "[bench] scale: /analytics as before the counters (one call, up to {BEFORE_TIMEOUT:?})"
        );
        let before = Instant::now();
        let analytics_before = rt
            .block_on(async {
                tokio::time::timeout(BEFORE_TIMEOUT, store.analytics_summary_from_events()).await
            })
            .ok()
            .and_then(|summary| summary.ok())
            .map(|_| before.elapsed());
        let figure = |label: &str| {
            rows.iter()
                .find(|row| row.route == label)
                .map(|row| row.achieved)
        };
        if let (Some(point), Some(first), Some(deep)) = (
            growth
                .iter_mut()
                .find(|point| point.applications == applications),
            figure(ADMIN_FIRST),
            figure(ADMIN_DEEP),
        ) {
            point.admin = Some(AdminPages {
                deep_page: DEEP_PAGE,
                first,
                deep,
            });
        }
        if std::env::var_os("BENCH_KEEP_DATA").is_none() {
            let _ = rt.block_on(space.remove());
        }
        Ok(Scale {
            users,
            applications,
            events,
            seed_secs,
            duration_secs: duration.as_secs(),
            runs: settings.runs.max(1),
            connections: concurrency,
            rows,
            growth,
            analytics_before,
        })
    }
}

impl Bench<'_> {
    /// Runs each of `routes` on `space`: its function started, warmed up, its
    /// ceiling measured, then wrk; a row each.
    fn measure_rows(
        &mut self,
        space: &Space,
        routes: Vec<Route>,
        rows: &mut Vec<Row>,
    ) -> Result<()> {
        for (label, function, _, script, ceiling) in routes {
            eprintln!("[bench] scale: {label}");
            let process = self.start(function, space)?;
            let load = self.saturate(&process, script);
            self.record("scale", &load, function);
            self.warm_up(&load, function)?;
            let mut runs = Vec::new();
            for _ in 0..self.settings.runs.max(1) {
                let ceiling = ceiling();
                runs.push((load.run(&self.settings.scratch, function)?, ceiling));
            }
            process.stop()?;
            rows.push(Row::of(label, runs));
            if function == "admin-applications" {
                crate::machine::wait_until_quiet(0.15, SETTLE);
            }
        }
        Ok(())
    }

    /// `/admin/applications` page 1 and its deepest page up to 1,000, on a
    /// space of `size` applications, as `admin` (one token); wrk only.
    fn admin_pages(&mut self, space: &Space, admin: &[String], size: usize) -> Result<AdminPages> {
        let deep_page = DEEP_PAGE.min((size as u64 / PER_PAGE).max(1));
        eprintln!("[bench] scale: admin pages 1 and {deep_page} at {size} applications");
        let process = self.start("admin-applications", space)?;
        let mut figures = Vec::new();
        for page in [1, deep_page] {
            let path = format!("/admin/applications?page={page}&per_page={PER_PAGE}");
            let load = self.saturate(&process, Script::get(&path).with_tokens(admin));
            self.warm_up(&load, "admin-applications")?;
            figures.push(load.run(&self.settings.scratch, "admin-applications")?);
            crate::machine::wait_until_quiet(0.15, SETTLE);
        }
        process.stop()?;
        let deep = figures.pop().unwrap_or_default();
        let first = figures.pop().unwrap_or_default();
        Ok(AdminPages {
            deep_page,
            first,
            deep,
        })
    }
}

fn admin_ceiling(
    rt: &tokio::runtime::Runtime,
    store: &Store,
    page: PageRequest,
    concurrency: usize,
    duration: std::time::Duration,
) -> Figure {
    let store = store.clone();
    rt.block_on(ceilings::closed_loop(concurrency, duration, move |_, _| {
        let store = store.clone();
        async move {
            store.find_user("scale_admin").await.is_ok()
                && store.page_applications(page).await.is_ok()
        }
    }))
}

fn ms(figure: &Figure) -> String {
    format!("{:.1}", figure.p99.as_secs_f64() * 1000.0)
}

/// The scale section of BENCHMARKS.md.
pub fn render(scale: &Scale, date: &str, busy: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{BEGIN}\n## At real sizes (`scale`)\n");
    let _ = writeln!(
        out,
        "Run on {date}: {} users, {} applications, {} analytics events in one database, seeded in {:.0} s \
         (bulk `insert_many`). {} run(s) per row, {} s each, wrk -c{}; each ceiling is the handler's own \
         database work (the same `Store` calls, caller lookup included) from {} tasks of the bench process, \
         measured just before its route in every run; a row shows the run whose ratio is the median, and \
         every run's ratio in brackets. The growth curve is one run per point. On the local default: FerretDB 1.24 on PostgreSQL, \
         with `tools/ferretdb/pushdown.patch`. \
         CPU busy before the run: {busy} (the machine's 2 cores were shared with other work).\n",
        scale.users,
        scale.applications,
        scale.events,
        scale.seed_secs,
        scale.runs,
        scale.duration_secs,
        scale.connections,
        scale.connections
    );
    let _ = writeln!(
        out,
        "| route | req/s | p50 ms | p99 ms | non-2xx or failed | ceiling q/s | ceiling p99 ms | of ceiling |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
    for row in &scale.rows {
        let ratio = percent_of(row.achieved.rps, row.ceiling.rps);
        let each = if row.ratios.len() > 1 {
            let each: Vec<String> = row.ratios.iter().map(|r| format!("{r:.0}%")).collect();
            format!(" ({})", each.join(", "))
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "| `{}` | {:.1} | {:.1} | {} | {} | {:.1} | {} | {:.0}%{each} |",
            row.route,
            row.achieved.rps,
            row.achieved.p50.as_secs_f64() * 1000.0,
            ms(&row.achieved),
            row.achieved.errors,
            row.ceiling.rps,
            ms(&row.ceiling),
            ratio
        );
    }
    let _ = writeln!(
        out,
        "\nThe admin pages are measured last, after the growth curve: on a FerretDB without the \
         patch each of their requests reads the whole collection, and reads wrk gave up on run on \
         after it stops.\n\n\
         Growth of `GET /status` (each probe user holds {PROBE_APPLICATIONS} applications at every \
         size), and of `/admin/applications` ({PER_PAGE} per page) at page 1 and at a deep page \
         (page 1,000, or the last page of a smaller collection), wrk only:\n"
    );
    let _ = writeln!(
        out,
        "| applications | `/status` req/s | p99 ms | non-2xx or failed | ceiling q/s | of ceiling | admin page 1 req/s | p99 ms | deep page | req/s | p99 ms |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|");
    for point in &scale.growth {
        let ratio = percent_of(point.achieved.rps, point.ceiling.rps);
        let admin = point.admin.as_ref().map_or_else(
            || "| | | | | ".to_owned(),
            |pages| {
                format!(
                    "| {:.1} | {} | {} | {:.1} | {} ",
                    pages.first.rps,
                    ms(&pages.first),
                    pages.deep_page,
                    pages.deep.rps,
                    ms(&pages.deep)
                )
            },
        );
        let _ = writeln!(
            out,
            "| {} | {:.1} | {} | {} | {:.1} | {:.0}% {admin}|",
            point.applications,
            point.achieved.rps,
            ms(&point.achieved),
            point.achieved.errors,
            point.ceiling.rps,
            ratio
        );
    }
    let before = match scale.analytics_before {
        Some(took) => format!("{:.1} s for one request", took.as_secs_f64()),
        None => format!("no answer within {} s", BEFORE_TIMEOUT.as_secs()),
    };
    let after = scale
        .rows
        .iter()
        .find(|row| row.route == "GET /analytics")
        .map_or_else(String::new, |row| {
            format!(
                "p50 {:.1} ms, p99 {} ms under 16 connections",
                row.achieved.p50.as_secs_f64() * 1000.0,
                ms(&row.achieved)
            )
        });
    let _ = writeln!(
        out,
        "\n`GET /analytics` at {} events: before (four scans of `user_analytics`, timed once from the bench) {before}; \
         after (the counters) {after}.\n\n{END}",
        scale.events
    );
    out
}

pub const BEGIN: &str = "<!-- scale:begin (written by finapp-bench's scale scenario) -->";
pub const END: &str = "<!-- scale:end -->";

/// `report` with its scale section replaced by `section` (appended when absent).
pub fn splice(report: &str, section: &str) -> String {
    match (report.find(BEGIN), report.find(END)) {
        (Some(begin), Some(end)) if end > begin => {
            format!(
                "{}{}{}",
                &report[..begin],
                section.trim_end(),
                &report[end + END.len()..]
            )
        }
        _ => format!("{}\n\n{}", report.trim_end(), section),
    }
}

/// `achieved` as a percentage of `ceiling` (0 when there is no ceiling).
fn percent_of(achieved: f64, ceiling: f64) -> f64 {
    if ceiling > 0.0 {
        achieved / ceiling * 100.0
    } else {
        0.0
    }
}

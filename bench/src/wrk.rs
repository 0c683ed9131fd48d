//! wrk, the load generator: a separate process driven by a generated Lua
//! script. Every script ends with a `done` hook that prints one machine-readable
//! line (requests, duration, latency percentiles in microseconds, errors), so
//! nothing depends on wrk's human-readable layout.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

use crate::{
    error::{Error, Result},
    stats::Figure,
};

/// The marker of the line the `done` hook prints.
const RESULT_MARKER: &str = "FINAPP_WRK";

/// What each request looks like.
#[derive(Clone, Debug)]
pub struct Script {
    pub method: &'static str,
    pub path: String,
    /// A JSON body, sent with `Content-Type: application/json`.
    pub body: Option<String>,
    /// Bearer tokens, used in turn, one per request.
    pub tokens: Vec<String>,
    /// Pause before every request (a light probe rather than load).
    pub delay: Option<Duration>,
    /// Spread the connections' first requests apart, so long requests do
    /// not start and finish in lockstep.
    pub stagger: Option<Stagger>,
    /// Stop each wrk thread after this many responses.
    pub stop_after: Option<u64>,
}

impl Script {
    pub fn get(path: &str) -> Self {
        Self {
            method: "GET",
            path: path.to_owned(),
            body: None,
            tokens: Vec::new(),
            delay: None,
            stagger: None,
            stop_after: None,
        }
    }

    pub fn post(path: &str, body: String) -> Self {
        Self {
            method: "POST",
            body: Some(body),
            ..Self::get(path)
        }
    }

    pub fn with_tokens(mut self, tokens: &[String]) -> Self {
        self.tokens = tokens.to_vec();
        self
    }

    /// The script's Lua source.
    pub fn lua(&self) -> String {
        let mut lua = String::new();
        lua.push_str(&format!(
            "local method, path = {}, {}\n",
            lua_string(self.method),
            lua_string(&self.path)
        ));
        lua.push_str(&format!(
            "local body = {}\n",
            self.body.as_deref().map_or("nil".into(), lua_string)
        ));
        let tokens: Vec<String> = self.tokens.iter().map(|t| lua_string(t)).collect();
        lua.push_str(&format!("local tokens = {{ {} }}\n", tokens.join(", ")));
        lua.push_str(concat!(
            "local headers = {}\n",
            "if body then headers[\"Content-Type\"] = \"application/json\" end\n",
            "local sent = 0\n",
            "request = function()\n",
            "  sent = sent + 1\n",
            "  if #tokens > 0 then\n",
            "    headers[\"Authorization\"] = \"Bearer \" .. tokens[(sent % #tokens) + 1]\n",
            "  end\n",
            "  return wrk.format(method, path, headers, body)\n",
            "end\n",
        ));
        match (self.delay, self.stagger) {
            (Some(delay), _) => {
                lua.push_str(&format!(
                    "delay = function() return {} end\n",
                    delay.as_millis()
                ));
            }
            (None, Some(stagger)) => {
                // `delay` runs before each request of the thread; the first one
                // on each of the thread's connections waits a further step.
                lua.push_str(&format!(
                    concat!(
                        "local connections, step, started = {}, {}, 0\n",
                        "delay = function()\n",
                        "  started = started + 1\n",
                        "  if started <= connections then return (started - 1) * step end\n",
                        "  return 0\n",
                        "end\n",
                    ),
                    stagger.connections_per_thread,
                    stagger.step.as_millis()
                ));
            }
            (None, None) => {}
        }
        if let Some(limit) = self.stop_after {
            lua.push_str(&format!(
                concat!(
                    "local answered = 0\n",
                    "response = function(status, headers, body)\n",
                    "  answered = answered + 1\n",
                    "  if answered >= {} then wrk.thread:stop() end\n",
                    "end\n",
                ),
                limit
            ));
        }
        lua.push_str(&format!(
            concat!(
                "done = function(summary, latency, requests)\n",
                "  local e = summary.errors\n",
                "  io.write(string.format(\"{} %.0f %.0f %.0f %.0f %.0f %.0f %.0f\\n\",\n",
                "    summary.requests, summary.duration,\n",
                "    latency:percentile(50), latency:percentile(99), latency.max,\n",
                "    e.connect + e.read + e.write + e.timeout, e.status))\n",
                "end\n",
            ),
            RESULT_MARKER
        ));
        lua
    }
}

/// Quotes `text` as a Lua string literal.
fn lua_string(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('"');
    for c in text.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            '\n' => quoted.push_str("\\n"),
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

/// The first request on each of a wrk thread's connections waits `step`
/// longer than the one before it.
#[derive(Clone, Copy, Debug)]
pub struct Stagger {
    pub step: Duration,
    pub connections_per_thread: usize,
}

/// One wrk invocation.
#[derive(Clone, Debug)]
pub struct Load {
    pub url: String,
    pub threads: usize,
    pub connections: usize,
    pub duration: Duration,
    /// A request slower than this counts as a timeout error.
    pub timeout: Duration,
    pub script: Script,
}

/// A wrk run in progress.
pub struct Running {
    child: Child,
    command_line: String,
}

impl Load {
    /// The script's file name in `scratch`.
    fn script_path(&self, scratch: &Path, name: &str) -> PathBuf {
        scratch.join(format!("{name}.lua"))
    }

    fn args(&self, script: &Path) -> Vec<String> {
        vec![
            format!("-t{}", self.threads),
            format!("-c{}", self.connections),
            format!("-d{}s", self.duration.as_secs().max(1)),
            format!("--timeout={}s", self.timeout.as_secs().max(1)),
            "-s".into(),
            script.display().to_string(),
            self.url.clone(),
        ]
    }

    /// The command line, as the report shows it.
    pub fn command_line(&self, scratch: &Path, name: &str) -> String {
        format!(
            "wrk {}",
            self.args(&self.script_path(scratch, name)).join(" ")
        )
    }

    /// Starts wrk with the script written to `scratch/<name>.lua`.
    pub fn start(&self, scratch: &Path, name: &str) -> Result<Running> {
        let script = self.script_path(scratch, name);
        std::fs::write(&script, self.script.lua())?;
        let child = Command::new("wrk")
            .args(self.args(&script))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|err| Error::Wrk(format!("cannot start wrk ({err}); apt-get install wrk")))?;
        Ok(Running {
            child,
            command_line: self.command_line(scratch, name),
        })
    }

    /// Runs wrk to the end and returns its figure.
    pub fn run(&self, scratch: &Path, name: &str) -> Result<Figure> {
        self.start(scratch, name)?.finish()
    }
}

impl Running {
    /// Waits for wrk to finish and parses its result line.
    pub fn finish(self) -> Result<Figure> {
        let output = self.child.wait_with_output()?;
        parse(&output).map_err(|reason| {
            Error::Wrk(format!(
                "{reason}: `{}` printed:\n{}{}",
                self.command_line,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ))
        })
    }
}

fn parse(output: &Output) -> std::result::Result<Figure, String> {
    if !output.status.success() {
        return Err(format!("exited with {}", output.status));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find_map(|line| line.strip_prefix(RESULT_MARKER))
        .ok_or("no result line")?;
    let fields: Vec<f64> = line
        .split_whitespace()
        .map(str::parse)
        .collect::<std::result::Result<_, _>>()
        .map_err(|err| format!("malformed result line ({err})"))?;
    let [
        requests,
        duration_us,
        p50_us,
        p99_us,
        _max_us,
        socket_errors,
        status_errors,
    ] = fields[..]
    else {
        return Err("result line has the wrong number of fields".into());
    };
    let micros = |us: f64| Duration::from_micros(us as u64);
    Ok(Figure {
        rps: requests / (duration_us / 1e6),
        p50: micros(p50_us),
        p99: micros(p99_us),
        requests: requests as u64,
        errors: (socket_errors + status_errors) as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_result_line_becomes_a_figure() {
        use std::os::unix::process::ExitStatusExt as _;
        let output = Output {
            status: std::process::ExitStatus::from_raw(0),
            stdout: b"Running 10s test\nFINAPP_WRK 1000 10000000 250 900 1500 1 2\n".to_vec(),
            stderr: Vec::new(),
        };
        let figure = parse(&output).unwrap();
        assert_eq!(figure.requests, 1000);
        assert!((figure.rps - 100.0).abs() < 1e-9);
        assert_eq!(figure.p50, Duration::from_micros(250));
        assert_eq!(figure.p99, Duration::from_micros(900));
        assert_eq!(figure.errors, 3);
    }

    #[test]
    fn strings_are_quoted_for_lua() {
        assert_eq!(lua_string(r#"{"a":"b\c"}"#), r#""{\"a\":\"b\\c\"}""#);
    }

    #[test]
    fn a_post_script_sends_its_body_and_rotates_tokens() {
        let lua = Script::post("/apply", r#"{"amount":1}"#.into())
            .with_tokens(&["t1".into(), "t2".into()])
            .lua();
        assert!(lua.contains(r#"local body = "{\"amount\":1}""#), "{lua}");
        assert!(lua.contains(r#"local tokens = { "t1", "t2" }"#), "{lua}");
        assert!(lua.contains("done = function"), "{lua}");
    }
}

//! Drives load with `wrk` (Debian's package; `scripts/bench` installs it) and
//! reads its report.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// One measured figure.
pub struct Figure {
    pub requests_per_second: f64,
    pub p50_us: f64,
    pub p99_us: f64,
}

/// The load: where, how, and with which body.
pub struct Load<'a> {
    pub url: String,
    pub key: Option<&'a str>,
    /// A JSON body makes it a POST.
    pub body: Option<String>,
    /// Or a Lua `request()` that makes each POST body (see [`generated`]).
    pub script: Option<String>,
}

/// A wrk script POSTing a body made per request by `lua_body`, a Lua
/// expression over `n` (this thread's request number, from 1) and `t` (the
/// thread's number): fresh idempotency keys, users drawn from a population.
pub fn generated(lua_body: &str) -> String {
    format!(
        "local threads = 0\n\
         function setup(thread) threads = threads + 1; thread:set(\"t\", threads) end\n\
         function init() n = 0; math.randomseed(os.time() * 100 + t) end\n\
         -- A random version-4 UUID, as Segment's libraries and Stripe's\n\
         -- clients make idempotency keys (random keys spread over the index).\n\
         function uuid() local r = math.random; return string.format(\
         '%08x-%04x-4%03x-%04x-%06x%06x', r(0, 0xffffffff), r(0, 0xffff), r(0, 0xfff), \
         0x8000 + r(0, 0x3fff), r(0, 0xffffff), r(0, 0xffffff)) end\n\
         wrk.method = \"POST\"\n\
         wrk.headers[\"Content-Type\"] = \"application/json\"\n\
         function request() n = n + 1; return wrk.format(nil, nil, nil, {lua_body}) end\n"
    )
}

pub struct Wrk<'a> {
    pub seconds: u64,
    pub connections: usize,
    pub threads: usize,
    pub scratch: &'a Path,
}

impl Wrk<'_> {
    pub fn run(&self, load: &Load) -> Result<Figure> {
        let mut command = Command::new("wrk");
        command
            .arg(format!("-t{}", self.threads))
            .arg(format!("-c{}", self.connections))
            .arg(format!("-d{}s", self.seconds))
            .arg("--latency");
        if let Some(key) = load.key {
            command.args(["-H", &format!("Authorization: Bearer {key}")]);
        }
        if let Some(source) = &load.script {
            let script = self.scratch.join("generated.lua");
            std::fs::write(&script, source)?;
            command.arg("-s").arg(&script);
        } else if let Some(body) = &load.body {
            let script = self.scratch.join("post.lua");
            std::fs::write(
                &script,
                format!(
                    "wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\nwrk.body = [==[{body}]==]\n"
                ),
            )?;
            command.arg("-s").arg(&script);
        }
        command.arg(&load.url);
        let output = command
            .output()
            .context("cannot run wrk; install it (`apt-get install wrk`) or use scripts/bench")?;
        let report = String::from_utf8_lossy(&output.stdout).into_owned();
        if !output.status.success() {
            bail!(
                "wrk failed: {}{}",
                report,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        parse_report(&report)
    }
}

/// Reads `Requests/sec`, the 50 % and 99 % latencies, and refuses a run in
/// which any answer was not 2xx/3xx or any socket failed.
pub fn parse_report(report: &str) -> Result<Figure> {
    if let Some(line) = report
        .lines()
        .find(|l| l.contains("Non-2xx") || l.contains("Socket errors"))
    {
        bail!("the load was not clean ({}):\n{report}", line.trim());
    }
    let value_after = |prefix: &str| -> Result<&str> {
        report
            .lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(prefix))
            .map(str::trim)
            .with_context(|| format!("no `{prefix}` in wrk's report:\n{report}"))
    };
    Ok(Figure {
        requests_per_second: value_after("Requests/sec:")?.parse()?,
        p50_us: duration_us(value_after("50%")?)?,
        p99_us: duration_us(value_after("99%")?)?,
    })
}

/// `458.00us`, `1.07ms`, `2.00s` → microseconds.
fn duration_us(text: &str) -> Result<f64> {
    let (number, factor) = if let Some(n) = text.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1_000.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1_000_000.0)
    } else {
        bail!("unknown duration {text:?}")
    };
    Ok(number.parse::<f64>()? * factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = "Running 2s test @ http://127.0.0.1:7777/livez
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   494.07us  143.17us   5.10ms   86.68%
    Req/Sec   128.36k     5.89k  138.04k    87.50%
  Latency Distribution
     50%  458.00us
     75%  526.00us
     90%  636.00us
     99%    1.07ms
  255363 requests in 2.00s, 30.44MB read
Requests/sec: 127588.90
Transfer/sec:     15.22MB
";

    #[test]
    fn reads_rate_and_percentiles() {
        let f = parse_report(REPORT).unwrap();
        assert_eq!(f.requests_per_second, 127_588.90);
        assert_eq!(f.p50_us, 458.0);
        assert_eq!(f.p99_us, 1_070.0);
    }

    #[test]
    fn refuses_errors() {
        let bad = REPORT.replace(
            "Requests/sec",
            "  Non-2xx or 3xx responses: 12\nRequests/sec",
        );
        assert!(parse_report(&bad).is_err());
        assert!(parse_report("garbage").is_err());
        assert_eq!(duration_us("2.50s").unwrap(), 2_500_000.0);
    }
}

//! `rmachine ls`.

use std::time::Duration;

use anyhow::bail;
use rmachine_host::machine::{self, ListEntry};
use rmachine_host::store::Store;
use rmachine_host::template;
use serde_json::json;

use crate::output::out;
use crate::table;

/// List machines.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Print machine names only
    #[arg(short, long)]
    quiet: bool,

    /// Filter output: driver=, state=, name= (a regular expression), label=KEY=VALUE, swarm=
    /// (repeatable; the same key ORs, different keys AND; rmachine has no swarm, so swarm=
    /// matches no machine)
    #[arg(long)]
    filter: Vec<String>,

    /// Seconds to wait for each machine's answer
    #[arg(short, long, default_value_t = 10)]
    timeout: u64,

    /// Go-template-like format, e.g. 'table {{.Name}}\t{{.State}}'
    #[arg(short, long)]
    format: Option<String>,
}

const DEFAULT_FORMAT: &str = "table {{ .Name }}\t{{ .Active }}\t{{ .DriverName}}\t{{ .State }}\t{{ .URL }}\t{{ .Swarm }}\t{{ .DockerVersion }}\t{{ .Error}}";

fn headers() -> serde_json::Value {
    json!({
        "Name": "NAME", "Active": "ACTIVE", "ActiveHost": "ACTIVE_HOST", "ActiveSwarm": "ACTIVE_SWARM",
        "DriverName": "DRIVER", "State": "STATE", "URL": "URL", "SwarmOptions": "SWARM_OPTIONS",
        "Swarm": "SWARM", "EngineOptions": "ENGINE_OPTIONS", "Error": "ERRORS",
        "DockerVersion": "DOCKER", "ResponseTime": "RESPONSE",
    })
}

/// Parsed `--filter` values: (key, wanted values).
fn parse_filters(filters: &[String]) -> anyhow::Result<Vec<(String, Vec<String>)>> {
    let mut parsed: Vec<(String, Vec<String>)> = Vec::new();
    for filter in filters {
        let Some((key, value)) = filter.split_once('=') else {
            bail!("Unsupported filter syntax");
        };
        let key = key.to_lowercase();
        if !matches!(
            key.as_str(),
            "driver" | "state" | "name" | "label" | "swarm"
        ) {
            bail!("Unsupported filter key '{key}'");
        }
        if key == "name" {
            // docker-machine compiles name filters as regular expressions and fails on a bad one.
            regex::Regex::new(value)?;
        }
        match parsed.iter_mut().find(|(k, _)| *k == key) {
            Some((_, values)) => values.push(value.to_owned()),
            None => parsed.push((key, vec![value.to_owned()])),
        }
    }
    Ok(parsed)
}

/// The engine labels of machine `name` as `key → value` (none if its record is unreadable).
fn labels(store: &Store, name: &str) -> Vec<(String, String)> {
    let Ok(config) = store.load(name) else {
        return Vec::new();
    };
    config
        .host_options
        .engine_options
        .labels
        .iter()
        .map(|label| match label.split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => (label.clone(), String::new()),
        })
        .collect()
}

/// docker-machine's `filterHost`: driver and state compare without case, name is a regular
/// expression, label is `KEY=VALUE` (value without case), swarm never matches (no swarm here).
fn matches(store: &Store, entry: &ListEntry, filters: &[(String, Vec<String>)]) -> bool {
    filters.iter().all(|(key, values)| {
        values.iter().any(|value| match key.as_str() {
            "driver" => value.eq_ignore_ascii_case(&entry.driver_name),
            "state" => value.eq_ignore_ascii_case(&entry.state),
            "name" => regex::Regex::new(value).is_ok_and(|re| re.is_match(&entry.name)),
            "label" => {
                let (k, v) = value.split_once('=').unwrap_or((value, ""));
                labels(store, &entry.name)
                    .iter()
                    .any(|(lk, lv)| lk == k && lv.eq_ignore_ascii_case(v))
            }
            _ => false,
        })
    })
}

/// Renders the rows with `format` (docker-machine's `ls --format` rules).
pub fn render(entries: &[ListEntry], format: &str) -> anyhow::Result<String> {
    let format = format.replace("\\t", "\t").replace("\\n", "\n");
    let (is_table, body) = match format.strip_prefix("table ") {
        Some(body) => (true, body.to_string()),
        None => (false, format),
    };
    let mut lines = Vec::new();
    if is_table {
        lines.push(template::render(&body, &headers())?);
    }
    for entry in entries {
        let value = serde_json::to_value(entry)?;
        lines.push(template::render(&body, &value)?);
    }
    if is_table {
        let rows: Vec<Vec<String>> = lines
            .iter()
            .map(|l| l.split('\t').map(str::to_string).collect())
            .collect();
        Ok(table::render(&rows))
    } else {
        Ok(lines.iter().map(|l| format!("{l}\n")).collect())
    }
}

pub async fn run(store: &Store, args: Args) -> anyhow::Result<u8> {
    let filters = parse_filters(&args.filter)?;
    let docker_host = std::env::var("DOCKER_HOST").ok();
    let entries: Vec<ListEntry> = if args.quiet && filters.is_empty() {
        // Names alone need no machine queries.
        store
            .list()?
            .into_iter()
            .map(|name| ListEntry {
                name,
                active: String::new(),
                driver_name: String::new(),
                state: String::new(),
                url: String::new(),
                swarm: String::new(),
                docker_version: String::new(),
                error: String::new(),
                response_time: String::new(),
            })
            .collect()
    } else {
        machine::list(
            store,
            Duration::from_secs(args.timeout),
            docker_host.as_deref(),
        )
        .await?
        .into_iter()
        .filter(|e| matches(store, e, &filters))
        .collect()
    };
    if args.quiet {
        let names: String = entries.iter().map(|e| format!("{}\n", e.name)).collect();
        out(&names)?;
        return Ok(0);
    }
    let mut entries = entries;
    for entry in &mut entries {
        // docker-machine leaves "Host is not running" out of the ERRORS column.
        if entry.error == "Host is not running" {
            entry.error.clear();
        }
    }
    out(&render(
        &entries,
        args.format.as_deref().unwrap_or(DEFAULT_FORMAT),
    )?)?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, state: &str, url: &str, version: &str) -> ListEntry {
        ListEntry {
            name: name.into(),
            active: if url.is_empty() { "-" } else { "*" }.into(),
            driver_name: "qemu".into(),
            state: state.into(),
            url: url.into(),
            swarm: String::new(),
            docker_version: version.into(),
            error: String::new(),
            response_time: String::new(),
        }
    }

    #[test]
    fn default_table() {
        let rows = [
            entry("intro", "Running", "tcp://127.0.0.1:42376", "v0.1.0"),
            entry("other", "Stopped", "", "Unknown"),
        ];
        assert_eq!(
            render(&rows, DEFAULT_FORMAT).unwrap(),
            "NAME    ACTIVE   DRIVER   STATE     URL                     SWARM   DOCKER    ERRORS\n\
             intro   *        qemu     Running   tcp://127.0.0.1:42376           v0.1.0    \n\
             other   -        qemu     Stopped                                   Unknown   \n"
        );
    }

    #[test]
    fn custom_formats() {
        let rows = [entry("intro", "Running", "tcp://127.0.0.1:1", "v0.1.0")];
        assert_eq!(
            render(&rows, "{{.Name}}: {{.State}}").unwrap(),
            "intro: Running\n"
        );
        assert_eq!(
            render(&rows, "table {{.Name}}\\t{{.DockerVersion}}").unwrap(),
            "NAME    DOCKER\nintro   v0.1.0\n"
        );
    }

    #[test]
    fn filters() {
        let running = entry("intro", "Running", "tcp://127.0.0.1:1", "v0.1.0");
        let stopped = entry("b", "Stopped", "", "Unknown");
        let tmp = std::env::temp_dir().join(format!("rmachine-ls-test-{}", std::process::id()));
        let store = Store::open(Some(tmp)).unwrap();
        let f = parse_filters(&["state=running".into(), "state=Stopped".into()]).unwrap();
        assert!(matches(&store, &running, &f) && matches(&store, &stopped, &f));
        let f = parse_filters(&["state=running".into(), "name=b".into()]).unwrap();
        assert!(!matches(&store, &running, &f) && !matches(&store, &stopped, &f));
        assert_eq!(
            parse_filters(&["color=red".into()])
                .unwrap_err()
                .to_string(),
            "Unsupported filter key 'color'"
        );
    }
}

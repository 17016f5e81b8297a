//! The engine's event stream (`GET /events`, `docker events`): container and image lifecycle
//! events in Docker's JSON shape, with a short backlog for `--since`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::broadcast;

/// How many past events `since` can replay (dockerd keeps 256 too).
const BACKLOG: usize = 256;

/// Who an event is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Actor {
    /// Container id or image reference.
    #[serde(rename = "ID")]
    pub id: String,
    /// `name`, `image`, `exitCode`, `signal`, labels...
    #[serde(rename = "Attributes")]
    pub attributes: BTreeMap<String, String>,
}

/// One event, serialised as dockerd sends it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    /// `container` or `image`.
    #[serde(rename = "Type")]
    pub kind: String,
    /// `create`, `start`, `die`, `destroy`, `load`, `delete`...
    #[serde(rename = "Action")]
    pub action: String,
    /// The object.
    #[serde(rename = "Actor")]
    pub actor: Actor,
    /// Always `local`.
    pub scope: String,
    /// Unix seconds.
    pub time: i64,
    /// Unix nanoseconds.
    #[serde(rename = "timeNano")]
    pub time_nano: i64,
}

impl Event {
    /// When it happened.
    pub fn at(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_nanos(self.time_nano)
    }
}

/// An event with the fields dockerd still adds for API versions before 1.52 (`status`, `id`
/// and, for containers, `from`: moby system_routes.go `backFillLegacy`). This engine speaks
/// 1.45, so every client gets them.
#[derive(Debug, Serialize)]
struct LegacyEvent<'a> {
    status: &'a str,
    id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    from: Option<&'a str>,
    #[serde(flatten)]
    event: &'a Event,
}

/// The JSON line `GET /events` sends for `event`.
pub fn to_json_line(event: &Event) -> Result<Vec<u8>, serde_json::Error> {
    let line = match event.kind.as_str() {
        "container" | "image" => serde_json::to_vec(&LegacyEvent {
            status: &event.action,
            id: &event.actor.id,
            from: (event.kind == "container").then(|| {
                event
                    .actor
                    .attributes
                    .get("image")
                    .map_or("", String::as_str)
            }),
            event,
        }),
        _ => serde_json::to_vec(event),
    };
    line.map(|mut line| {
        line.push(b'\n');
        line
    })
}

/// The command part of `exec_create: ...` and `exec_start: ...`: moby joins the entrypoint
/// and the arguments with a space even when there are no arguments (`exec_create: true `).
pub fn exec_command(cmd: &[String]) -> String {
    match cmd.split_first() {
        Some((entrypoint, args)) => format!("{entrypoint} {}", args.join(" ")),
        None => " ".into(),
    }
}

/// Publishes events to live subscribers and keeps a backlog.
#[derive(Debug)]
pub struct EventBus {
    tx: broadcast::Sender<Event>,
    backlog: Mutex<VecDeque<Event>>,
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus {
            tx: broadcast::channel(BACKLOG).0,
            backlog: Mutex::new(VecDeque::with_capacity(BACKLOG)),
        }
    }
}

impl EventBus {
    /// Records and broadcasts an event.
    pub fn emit(&self, kind: &str, action: &str, id: &str, attributes: BTreeMap<String, String>) {
        let now = Utc::now();
        let event = Event {
            kind: kind.to_string(),
            action: action.to_string(),
            actor: Actor {
                id: id.to_string(),
                attributes,
            },
            scope: "local".into(),
            time: now.timestamp(),
            time_nano: now.timestamp_nanos_opt().unwrap_or_default(),
        };
        let mut backlog = self.backlog.lock().unwrap_or_else(|p| p.into_inner());
        if backlog.len() == BACKLOG {
            backlog.pop_front();
        }
        backlog.push_back(event.clone());
        // Sent under the backlog lock, so a subscriber never sees an event twice or misses one
        // between its backlog copy and its live receiver.
        let _ = self.tx.send(event);
    }

    /// Past events at or after `since`, and a receiver for the ones to come.
    pub fn subscribe(
        &self,
        since: Option<DateTime<Utc>>,
    ) -> (Vec<Event>, broadcast::Receiver<Event>) {
        let backlog = self.backlog.lock().unwrap_or_else(|p| p.into_inner());
        let past = match since {
            Some(since) => backlog
                .iter()
                .filter(|e| e.at() >= since)
                .cloned()
                .collect(),
            None => Vec::new(),
        };
        (past, self.tx.subscribe())
    }
}

/// Docker's event filters (`type`, `event`, `container`, `image`, `label`).
pub fn matches(event: &Event, filters: &BTreeMap<String, Vec<String>>) -> bool {
    filters.iter().all(|(key, values)| {
        values.is_empty()
            || values.iter().any(|v| match key.as_str() {
                "type" => event.kind == *v,
                "event" => event.action == *v || event.action.starts_with(&format!("{v}:")),
                // moby's fuzzyMatchName: a prefix of the id or of the name.
                "container" => {
                    event.actor.id.starts_with(v.as_str())
                        || event
                            .actor
                            .attributes
                            .get("name")
                            .is_some_and(|name| name.starts_with(v.as_str()))
                }
                "image" => event.actor.attributes.get("image") == Some(v) || event.actor.id == *v,
                "label" => match v.split_once('=') {
                    Some((k, val)) => event.actor.attributes.get(k).is_some_and(|x| x == val),
                    None => event.actor.attributes.contains_key(v),
                },
                _ => true,
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backlog_replays_since_and_filters_select() {
        let bus = EventBus::default();
        let before = Utc::now();
        let attrs = BTreeMap::from([("name".to_string(), "web".to_string())]);
        bus.emit("container", "create", "abc", attrs.clone());
        bus.emit("container", "start", "abc", attrs);
        let (past, _rx) = bus.subscribe(Some(before));
        assert_eq!(past.len(), 2);
        let json = serde_json::to_value(&past[1]).unwrap();
        assert_eq!(json["Action"], "start");
        assert_eq!(json["Actor"]["Attributes"]["name"], "web");
        let only_start = BTreeMap::from([("event".to_string(), vec!["start".to_string()])]);
        assert!(!matches(&past[0], &only_start));
        assert!(matches(&past[1], &only_start));
        let by_name = BTreeMap::from([("container".to_string(), vec!["web".to_string()])]);
        assert!(matches(&past[0], &by_name));
    }

    #[test]
    fn container_filters_match_prefixes_of_names_and_ids() {
        let bus = EventBus::default();
        let before = Utc::now();
        for (id, name) in [("aaa1", "ev"), ("bbb2", "ev2"), ("ccc3", "other")] {
            let attrs = BTreeMap::from([("name".to_string(), name.to_string())]);
            bus.emit("container", "create", id, attrs);
        }
        let (past, _rx) = bus.subscribe(Some(before));
        let pick = |value: &str| -> Vec<String> {
            let filters = BTreeMap::from([("container".to_string(), vec![value.to_string()])]);
            past.iter()
                .filter(|e| matches(e, &filters))
                .map(|e| e.actor.id.clone())
                .collect()
        };
        assert_eq!(pick("ev"), ["aaa1", "bbb2"]);
        assert_eq!(pick("ev2"), ["bbb2"]);
        assert_eq!(pick("ccc"), ["ccc3"]);
        assert!(pick("zz").is_empty());
    }

    #[test]
    fn json_lines_carry_the_legacy_fields() {
        let bus = EventBus::default();
        let before = Utc::now();
        let attrs = BTreeMap::from([
            ("name".to_string(), "web".to_string()),
            ("image".to_string(), "busybox".to_string()),
        ]);
        bus.emit("container", "create", "abc", attrs);
        bus.emit("image", "load", "sha256:1", BTreeMap::new());
        let (past, _rx) = bus.subscribe(Some(before));
        let line = to_json_line(&past[0]).unwrap();
        assert_eq!(line.last(), Some(&b'\n'));
        let json: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(json["status"], "create");
        assert_eq!(json["id"], "abc");
        assert_eq!(json["from"], "busybox");
        assert_eq!(json["Action"], "create");
        assert_eq!(json["Actor"]["Attributes"]["name"], "web");
        let image: serde_json::Value =
            serde_json::from_slice(&to_json_line(&past[1]).unwrap()).unwrap();
        assert_eq!(image["status"], "load");
        assert_eq!(image["id"], "sha256:1");
        assert!(image.get("from").is_none());
    }

    #[test]
    fn exec_commands_keep_mobys_trailing_space() {
        let cmd =
            |args: &[&str]| exec_command(&args.iter().map(|a| a.to_string()).collect::<Vec<_>>());
        assert_eq!(cmd(&["true"]), "true ");
        assert_eq!(cmd(&["sh", "-c", "echo hi"]), "sh -c echo hi");
    }
}

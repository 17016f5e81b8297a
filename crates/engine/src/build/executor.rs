//! Runs a parsed Dockerfile as dockerd's classic builder does (moby `builder/dockerfile`):
//! every instruction after `FROM` makes a new image, config-only ones with an empty layer and
//! a `#(nop)` history line, `RUN` from a container's upper directory, `COPY`/`ADD` from a
//! layer built out of the context. Progress goes out as the lines dockerd prints (`Step 2/5 :
//! RUN …`, ` ---> Running in …`, ` ---> Using cache`, ` ---> 3f2a…`).
//!
//! Images are made by the store's `create_image` (parent, the step's layer tar, config), so
//! the store's extractor, checks and durability apply. Steps are looked up in and recorded to the
//! [`BuildCache`] with dockerd's key: parent image and `container_config`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};

use super::cache::BuildCache;
use super::context::{relative, Context};
use super::instructions::{
    build_program, CommandLine, CopySpec, HealthSpec, Instruction, Program, Stage,
};
use super::substitution::{process_word, Env};
use super::{io_err, BuildError};
use crate::core::{CreateRequest, Engine, WaitCondition};
use crate::image::layer_export::{write_layer_tar, EMPTY_LAYER_DIFF_ID};
use crate::image::reference::Reference;
use crate::image::registry::pull::PullOptions;
use crate::image::registry::Progress as PullProgress;
use crate::image::{short_id, HistoryEntry, ImageError, ImageStore, NewImage, NewStep};

/// What a build reports while it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Text for the build output (`{"stream": …}`), as is.
    Stream(String),
    /// The id of an image a stage produced (`{"aux": {"ID": …}}`).
    Aux(String),
    /// An `ADD` URL's download: bytes so far and the size when known (moby's JSON
    /// progress, `Downloading [==>  ] x/y`).
    Download {
        /// Bytes received.
        current: u64,
        /// The body's length, if the server sent one.
        total: Option<u64>,
        /// The download finished (moby then sends an empty status line).
        done: bool,
    },
}

/// The options of `POST /build` the builder uses.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// `buildargs`: a `None` value is an argument given without one.
    pub build_args: BTreeMap<String, Option<String>>,
    /// `labels`: added to the final image.
    pub labels: BTreeMap<String, String>,
    /// `nocache`.
    pub no_cache: bool,
    /// `rm` (default true): remove the containers of successful steps.
    pub remove: bool,
    /// `forcerm`: remove them even after a failure.
    pub force_remove: bool,
    /// `target`: the stage to stop at.
    pub target: Option<String>,
    /// `HostConfig` fields for the RUN containers (`--network`, `--add-host`, `--memory`,
    /// `--cpuset-cpus`…), checked by the engine's create as for `docker run`.
    pub host_config: Map<String, Value>,
    /// `pull`: pull every `FROM` image even when it is present (`--pull`).
    pub pull: bool,
    /// `X-Registry-Config`: credentials by registry, for the `FROM` images pulled.
    pub registry_auth: BTreeMap<String, crate::image::registry::auth::AuthConfig>,
    /// `cachefrom` (`--cache-from`): when not empty, the only images whose steps are reused.
    pub cache_from: Vec<String>,
}

/// Args Docker passes to `RUN` without an `ARG` line (moby's `builtinAllowedBuildArgs`).
const BUILTIN_ARGS: &[&str] = &[
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
];

const DEFAULT_SHELL: &[&str] = &["/bin/sh", "-c"];

fn invalid(reason: impl Into<String>) -> BuildError {
    BuildError::Invalid {
        reason: reason.into(),
    }
}

fn engine_err(e: crate::core::EngineError) -> BuildError {
    BuildError::Engine(Box::new(e))
}

/// The state of the stage being built (moby's `dispatchState`).
struct StageState {
    /// Current image id; empty for `FROM scratch` before any step.
    image_id: String,
    /// The whole image config of the current image.
    config: Map<String, Value>,
    /// Its `config` object (moby's `runConfig`).
    run: Map<String, Value>,
    /// `ARG`s declared in this stage, with their values.
    args: BTreeMap<String, Option<String>>,
    /// A `CMD` was given in this stage (an `ENTRYPOINT` then keeps it).
    cmd_set: bool,
    /// The layers, topmost first (for lookups in the image's files).
    layers: Vec<PathBuf>,
}

impl StageState {
    fn env(&self) -> Vec<String> {
        strings(self.run.get("Env"))
    }

    fn shell(&self) -> Vec<String> {
        let s = strings(self.run.get("Shell"));
        if s.is_empty() {
            DEFAULT_SHELL.iter().map(|s| s.to_string()).collect()
        } else {
            s
        }
    }

    /// Variables for word expansion: ENV, then declared args ENV does not override.
    fn expansion_env(&self) -> Env {
        let mut env = Env::new();
        for (k, v) in &self.args {
            if let Some(v) = v {
                env.insert(k.clone(), v.clone());
            }
        }
        for e in self.env() {
            let (k, v) = e.split_once('=').unwrap_or((e.as_str(), ""));
            env.insert(k.to_string(), v.to_string());
        }
        env
    }

    /// Declared args with values that ENV does not set, `K=V`, sorted.
    fn arg_env(&self) -> Vec<String> {
        let env = self.env();
        let in_env = |k: &str| env.iter().any(|e| e.split('=').next() == Some(k));
        self.args
            .iter()
            .filter(|(k, _)| !in_env(k))
            .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={v}")))
            .collect()
    }
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The builder: one per build.
pub struct Builder<'a> {
    engine: &'a Engine,
    images: Arc<ImageStore>,
    data_root: PathBuf,
    context: &'a Context,
    options: BuildOptions,
    out: mpsc::UnboundedSender<Progress>,
    cache: BuildCache,
    cache_busted: bool,
    /// The `--cache-from` images present here (ids), resolved at the first probe; `None`
    /// without `--cache-from` (every cached step of the local cache is a candidate).
    cache_sources: Option<Vec<String>>,
    used_args: BTreeSet<String>,
    /// Finished stages: name or index → image id.
    stages: HashMap<String, String>,
    step: usize,
    total: usize,
    /// Becomes true when the client went away.
    cancel: watch::Receiver<bool>,
}

impl<'a> Builder<'a> {
    /// A builder over the engine, its image store and an unpacked context.
    pub fn new(
        engine: &'a Engine,
        images: Arc<ImageStore>,
        context: &'a Context,
        options: BuildOptions,
        out: mpsc::UnboundedSender<Progress>,
        cancel: watch::Receiver<bool>,
    ) -> Builder<'a> {
        let data_root = engine.config().data_root.clone();
        Builder {
            engine,
            images,
            cache: BuildCache::new(&data_root),
            data_root,
            context,
            options,
            out,
            cache_busted: false,
            cache_sources: None,
            used_args: BTreeSet::new(),
            stages: HashMap::new(),
            step: 0,
            total: 0,
            cancel,
        }
    }

    fn say(&self, text: impl Into<String>) {
        let _ = self.out.send(Progress::Stream(text.into()));
    }

    fn print_step(&mut self, original: &str) -> Result<(), BuildError> {
        if *self.cancel.borrow() {
            self.say("Build cancelled\n");
            return Err(BuildError::Cancelled);
        }
        self.step += 1;
        self.say(format!("Step {}/{} : {original}\n", self.step, self.total));
        Ok(())
    }

    /// Runs the Dockerfile; returns the final image id.
    pub async fn build(&mut self, program: &Program) -> Result<String, BuildError> {
        for w in &program.warnings {
            self.say(format!("[WARNING]: {w}\n"));
        }
        let mut stages: Vec<&Stage> = program.stages.iter().collect();
        if let Some(target) = &self.options.target {
            let target = target.to_ascii_lowercase();
            let pos = stages
                .iter()
                .position(|s| s.name.as_deref() == Some(target.as_str()))
                .ok_or_else(|| {
                    invalid(format!(
                        "failed to reach build target {target} in Dockerfile"
                    ))
                })?;
            stages.truncate(pos + 1);
        }
        if stages.is_empty() {
            return Err(invalid("No image was generated. Is your Dockerfile empty?"));
        }
        self.total = program.meta_args.len()
            + stages.len()
            + stages.iter().map(|s| s.commands.len()).sum::<usize>();

        // ARGs before the first FROM: usable in FROM lines only.
        let mut meta = Env::new();
        for cmd in &program.meta_args {
            self.print_step(&cmd.original)?;
            if let Instruction::Arg(args) = &cmd.instruction {
                for (name, default) in args {
                    let value = match self.options.build_args.get(name) {
                        Some(v) => {
                            self.used_args.insert(name.clone());
                            v.clone()
                        }
                        None => match default {
                            Some(d) => Some(process_word(d, &meta, program.escape)?),
                            None => None,
                        },
                    };
                    if let Some(v) = value {
                        meta.insert(name.clone(), v);
                    }
                }
            }
        }

        let mut image_id = String::new();
        for (index, stage) in stages.iter().enumerate() {
            self.print_step(&stage.original)?;
            let mut st = self.init_stage(stage, &meta, program.escape).await?;
            self.say(format!(" ---> {}\n", short_id(&st.image_id)));
            for cmd in &stage.commands {
                self.print_step(&cmd.original)?;
                self.dispatch(&mut st, &cmd.instruction, program.escape)
                    .await?;
                self.say(format!(" ---> {}\n", short_id(&st.image_id)));
            }
            if index + 1 == stages.len() && !self.options.labels.is_empty() {
                self.apply_build_labels(&mut st).await?;
            }
            if st.image_id.is_empty() {
                return Err(invalid("No image was generated. Is your Dockerfile empty?"));
            }
            let _ = self.out.send(Progress::Aux(st.image_id.clone()));
            self.stages.insert(index.to_string(), st.image_id.clone());
            if let Some(name) = &stage.name {
                self.stages.insert(name.clone(), st.image_id.clone());
            }
            image_id = st.image_id;
        }

        let unused: Vec<&String> = self
            .options
            .build_args
            .keys()
            .filter(|k| !self.used_args.contains(*k) && !BUILTIN_ARGS.contains(&k.as_str()))
            .collect();
        if !unused.is_empty() {
            let list: Vec<&str> = unused.iter().map(|s| s.as_str()).collect();
            self.say(format!(
                "[Warning] One or more build-args [{}] were not consumed\n",
                list.join(" ")
            ));
        }
        Ok(image_id)
    }

    /// `--label`s of the build: one more config step on the last stage, as dockerd does.
    async fn apply_build_labels(&mut self, st: &mut StageState) -> Result<(), BuildError> {
        let labels = st.run.entry("Labels").or_insert_with(|| json!({}));
        if !labels.is_object() {
            *labels = json!({});
        }
        if let Some(m) = labels.as_object_mut() {
            for (k, v) in &self.options.labels {
                m.insert(k.clone(), json!(v));
            }
        }
        let pairs: Vec<String> = self
            .options
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        self.commit_nop(st, &format!("LABEL {}", pairs.join(" ")))
            .await
    }

    async fn init_stage(
        &mut self,
        stage: &Stage,
        meta: &Env,
        escape: char,
    ) -> Result<StageState, BuildError> {
        if let Some(p) = &stage.platform {
            let p = process_word(p, meta, escape)?;
            let host = format!("linux/{}", host_arch());
            if p != host && p != "linux" {
                return Err(BuildError::Unsupported {
                    what: format!("FROM --platform={p} (only {host} is built here)"),
                });
            }
        }
        let base = process_word(&stage.base, meta, escape)?;
        if let Some(name) = &stage.name {
            if self.stages.contains_key(name) {
                return Err(invalid(format!("duplicate name {name}")));
            }
        }
        self.cache_busted = false;
        let mut st = StageState {
            image_id: String::new(),
            config: Map::new(),
            run: Map::new(),
            args: BTreeMap::new(),
            cmd_set: false,
            layers: Vec::new(),
        };
        if base.eq_ignore_ascii_case("scratch") {
            st.config.insert("architecture".into(), json!(host_arch()));
            st.config.insert("os".into(), json!("linux"));
            st.config
                .insert("rootfs".into(), json!({"type": "layers", "diff_ids": []}));
            st.run.insert(
                "Env".into(),
                json!(["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]),
            );
            return Ok(st);
        }
        let id = match self.stages.get(&base.to_ascii_lowercase()) {
            Some(id) => id.clone(),
            None => {
                let pullable = pullable_reference(&base);
                if let (true, Some(reference)) = (self.options.pull, &pullable) {
                    self.pull_base(reference).await?;
                }
                let images = self.images.clone();
                let b = base.clone();
                match blocking(move || images.resolve(&b)) {
                    Ok(found) => found.id,
                    // dockerd's classic builder pulls a FROM image it does not have.
                    Err(ImageError::NotFound { .. })
                        if pullable.is_some() && !self.options.pull =>
                    {
                        if let Some(reference) = &pullable {
                            self.pull_base(reference).await?;
                        }
                        let images = self.images.clone();
                        let b = base.clone();
                        blocking(move || images.resolve(&b))
                            .map_err(BuildError::Image)?
                            .id
                    }
                    Err(err) => return Err(BuildError::Image(err)),
                }
            }
        };
        self.load_image(&mut st, &id)?;
        let triggers = strings(st.run.get("OnBuild"));
        if !triggers.is_empty() {
            self.say(format!("# Executing {} build trigger", triggers.len()));
            if triggers.len() > 1 {
                self.say("s");
            }
            self.say("\n");
            st.run.insert("OnBuild".into(), Value::Null);
            for trigger in triggers {
                let df = super::dockerfile::parse(&format!("FROM scratch\n{trigger}\n"))?;
                let program = build_program(&df)?;
                let Some(cmd) = program.stages.first().and_then(|s| s.commands.first()) else {
                    continue;
                };
                self.dispatch(&mut st, &cmd.instruction, escape).await?;
            }
        }
        Ok(st)
    }

    /// Pulls a `FROM` image with the request's credentials for its registry, showing the
    /// pull's whole-image lines and each layer's state changes in the build output.
    async fn pull_base(&mut self, reference: &Reference) -> Result<(), BuildError> {
        let auth = registry_auth_for(&self.options.registry_auth, &reference.domain);
        let auth = self
            .engine
            .registry_credentials(&auth, reference, false)
            .await
            .map_err(|e| invalid(e.to_string()))?;
        let options = PullOptions {
            reference: reference.clone(),
            all_tags: false,
            auth,
            platform: None,
        };
        let (tx, mut rx) = mpsc::unbounded_channel::<PullProgress>();
        let out = self.out.clone();
        let forward = tokio::spawn(async move {
            while let Some(line) = rx.recv().await {
                // Byte counts would flood a log; the state changes tell the story.
                if matches!(line.status.as_str(), "Downloading" | "Extracting") {
                    continue;
                }
                let text = match line.id {
                    Some(id) => format!("{id}: {}\n", line.status),
                    None => format!("{}\n", line.status),
                };
                let _ = out.send(Progress::Stream(text));
            }
        });
        let pulled = self.engine.pull_image(options, tx).await;
        let _ = forward.await;
        pulled.map_err(|e| BuildError::Engine(Box::new(e)))
    }

    /// Makes `id` the stage's current image.
    fn load_image(&self, st: &mut StageState, id: &str) -> Result<(), BuildError> {
        let hex = id.strip_prefix("sha256:").unwrap_or(id);
        let path = self.data_root.join("image/blobs/sha256").join(hex);
        let bytes = fs::read(&path).map_err(io_err(&path))?;
        let config: Map<String, Value> = serde_json::from_slice(&bytes)
            .map_err(|e| invalid(format!("image config {id}: {e}")))?;
        st.run = config
            .get("config")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        st.config = config;
        st.image_id = id.to_string();
        let images = self.images.clone();
        let id = id.to_string();
        st.layers = blocking(move || images.rootfs_layers(&id)).map_err(BuildError::Image)?;
        Ok(())
    }

    async fn dispatch(
        &mut self,
        st: &mut StageState,
        instruction: &Instruction,
        escape: char,
    ) -> Result<(), BuildError> {
        let word = |st: &StageState, w: &str| process_word(w, &st.expansion_env(), escape);
        match instruction {
            Instruction::Env(pairs) => {
                // Every word is expanded with the environment from before the instruction,
                // as moby expands a whole command before running it.
                let vars = st.expansion_env();
                let mut env = st.env();
                let mut msg = String::from("ENV");
                for (k, v) in pairs {
                    let k = process_word(k, &vars, escape)?;
                    let v = process_word(v, &vars, escape)?;
                    msg.push_str(&format!(" {k}={v}"));
                    env.retain(|e| e.split('=').next() != Some(k.as_str()));
                    env.push(format!("{k}={v}"));
                    st.run.insert("Env".into(), json!(env));
                }
                self.commit_nop(st, &msg).await
            }
            Instruction::Label(pairs) => {
                let mut msg = String::from("LABEL");
                let mut expanded = Vec::new();
                for (k, v) in pairs {
                    let k = word(st, k)?;
                    let v = word(st, v)?;
                    msg.push_str(&format!(" {k}={v}"));
                    expanded.push((k, v));
                }
                let labels = st.run.entry("Labels").or_insert_with(|| json!({}));
                if !labels.is_object() {
                    *labels = json!({});
                }
                if let Some(m) = labels.as_object_mut() {
                    for (k, v) in expanded {
                        m.insert(k, json!(v));
                    }
                }
                self.commit_nop(st, &msg).await
            }
            Instruction::Maintainer(name) => {
                st.config.insert("author".into(), json!(name));
                self.commit_nop(st, &format!("MAINTAINER {name}")).await
            }
            Instruction::Arg(args) => {
                let mut msg = String::from("ARG");
                for (name, default) in args {
                    let value = match self.options.build_args.get(name) {
                        Some(v) => {
                            self.used_args.insert(name.clone());
                            v.clone()
                        }
                        None => match default {
                            Some(d) => Some(word(st, d)?),
                            None => None,
                        },
                    };
                    match default {
                        Some(d) => msg.push_str(&format!(" {name}={d}")),
                        None => msg.push_str(&format!(" {name}")),
                    }
                    st.args.insert(name.clone(), value);
                }
                self.commit_nop(st, &msg).await
            }
            Instruction::Cmd(cmd) => {
                let cmd = self.resolve_command(st, cmd);
                st.run.insert("Cmd".into(), json!(cmd));
                st.cmd_set = true;
                self.commit_nop(st, &format!("CMD {}", go_quote_list(&cmd)))
                    .await
            }
            Instruction::Entrypoint(cmd) => {
                let cmd = self.resolve_command(st, cmd);
                st.run.insert("Entrypoint".into(), json!(cmd));
                if !st.cmd_set {
                    st.run.insert("Cmd".into(), Value::Null);
                }
                self.commit_nop(st, &format!("ENTRYPOINT {}", go_quote_list(&cmd)))
                    .await
            }
            Instruction::Shell(shell) => {
                st.run.insert("Shell".into(), json!(shell));
                self.commit_nop(st, &format!("SHELL [{}]", shell.join(" ")))
                    .await
            }
            Instruction::Expose(ports) => {
                let mut expanded = Vec::new();
                for p in ports {
                    expanded.push(word(st, p)?);
                }
                let exposed = st.run.entry("ExposedPorts").or_insert_with(|| json!({}));
                if !exposed.is_object() {
                    *exposed = json!({});
                }
                for p in &expanded {
                    for key in port_keys(p)? {
                        if let Some(m) = exposed.as_object_mut() {
                            m.insert(key, json!({}));
                        }
                    }
                }
                self.commit_nop(st, &format!("EXPOSE {}", expanded.join(" ")))
                    .await
            }
            Instruction::Workdir(dir) => {
                let dir = word(st, dir)?;
                let current = st
                    .run
                    .get("WorkingDir")
                    .and_then(Value::as_str)
                    .unwrap_or("/")
                    .to_string();
                let joined = if dir.starts_with('/') {
                    dir
                } else {
                    format!("{}/{dir}", if current.is_empty() { "/" } else { &current })
                };
                let path = format!("/{}", relative(&joined).unwrap_or_default().display());
                st.run.insert("WorkingDir".into(), json!(path));
                let comment = format!("WORKDIR {path}");
                let cc = self.container_config(st, nop_cmd(st, &comment));
                if self.probe(st, &cc).await? {
                    return Ok(());
                }
                // dockerd creates the directory in the image when it is missing.
                let rel = path.trim_start_matches('/').to_string();
                let layer = if !rel.is_empty() && lookup(&st.layers, Path::new(&rel)).is_none() {
                    let staging = self.staging("workdir")?;
                    let target = staging.path.join(&rel);
                    fs::create_dir_all(&target).map_err(io_err(&target))?;
                    Some(staging)
                } else {
                    None
                };
                self.commit(st, cc, layer.as_ref().map(|s| s.path.as_path()))
                    .await
            }
            Instruction::User(user) => {
                let user = word(st, user)?;
                st.run.insert("User".into(), json!(user));
                self.commit_nop(st, &format!("USER {user}")).await
            }
            Instruction::Volume(paths) => {
                let mut expanded = Vec::new();
                for p in paths {
                    let p = word(st, p)?;
                    if p.trim().is_empty() {
                        return Err(invalid("VOLUME specified can not be an empty string"));
                    }
                    expanded.push(p);
                }
                let volumes = st.run.entry("Volumes").or_insert_with(|| json!({}));
                if !volumes.is_object() {
                    *volumes = json!({});
                }
                if let Some(m) = volumes.as_object_mut() {
                    for p in &expanded {
                        m.insert(p.clone(), json!({}));
                    }
                }
                self.commit_nop(st, &format!("VOLUME [{}]", expanded.join(" ")))
                    .await
            }
            Instruction::StopSignal(sig) => {
                let sig = word(st, sig)?;
                crate::core::parse_signal(&sig)
                    .map_err(|_| invalid(format!("Invalid signal: {sig}")))?;
                st.run.insert("StopSignal".into(), json!(sig));
                self.commit_nop(st, &format!("STOPSIGNAL {sig}")).await
            }
            Instruction::Healthcheck(spec) => {
                if let Some(old) = st.run.get("Healthcheck").filter(|v| !v.is_null()) {
                    let test = strings(old.get("Test"));
                    self.say(format!(
                        "Note: overriding previous HEALTHCHECK: [{}]\n",
                        test.join(" ")
                    ));
                }
                st.run.insert("Healthcheck".into(), health_json(spec));
                self.commit_nop(st, &format!("HEALTHCHECK &{{{}}}", health_go(spec)))
                    .await
            }
            Instruction::Onbuild(trigger) => {
                // Kept as written after ONBUILD (moby's `Expression`).
                let trigger = trigger.trim().to_string();
                let mut list = strings(st.run.get("OnBuild"));
                list.push(trigger.clone());
                st.run.insert("OnBuild".into(), json!(list));
                self.commit_nop(st, &format!("ONBUILD {trigger}")).await
            }
            // Moby's classic builder drops heredoc bodies (it runs the first line alone);
            // they run here as BuildKit runs them instead of being lost.
            Instruction::Run { command, heredocs } => match (command, heredocs.as_slice()) {
                (_, []) => self.run(st, command).await,
                // `RUN <<EOF` alone: the body is the shell script.
                (CommandLine::Shell(line), [doc]) if is_lone_heredoc(line) => {
                    if doc.content.starts_with("#!") {
                        return Err(BuildError::Unsupported {
                            what: "a RUN heredoc starting with #! (a script for another \
                                   interpreter)"
                                .into(),
                        });
                    }
                    self.run(st, &CommandLine::Shell(doc.content.clone())).await
                }
                // `RUN cat <<EOF > /file` and the like: the line with its bodies and
                // delimiters, for the shell to read as heredocs.
                (CommandLine::Shell(line), docs) => {
                    let mut script = line.clone();
                    for doc in docs {
                        script.push('\n');
                        script.push_str(&doc.content);
                        script.push_str(&doc.name);
                    }
                    self.run(st, &CommandLine::Shell(script)).await
                }
                // No shell reads them: refused rather than dropped.
                (CommandLine::Exec(_), _) => Err(BuildError::Unsupported {
                    what: "heredocs in an exec-form (JSON) RUN".into(),
                }),
            },
            Instruction::Copy(spec) => self.copy(st, spec, false, escape).await,
            Instruction::Add(spec) => self.copy(st, spec, true, escape).await,
        }
    }

    /// Shell form through the stage's shell; exec form as is.
    fn resolve_command(&self, st: &StageState, cmd: &CommandLine) -> Vec<String> {
        match cmd {
            CommandLine::Exec(args) => args.clone(),
            CommandLine::Shell(line) => {
                let mut v = st.shell();
                v.push(line.clone());
                v
            }
        }
    }

    /// The step's `container_config`: the run config with the step's `Cmd`.
    fn container_config(&self, st: &StageState, cmd: Vec<String>) -> Value {
        let mut cc = st.run.clone();
        cc.insert("Cmd".into(), json!(cmd));
        Value::Object(cc)
    }

    /// A cache lookup; on a hit the stage moves to the cached image.
    async fn probe(&mut self, st: &mut StageState, cc: &Value) -> Result<bool, BuildError> {
        if self.options.no_cache || self.cache_busted {
            return Ok(false);
        }
        let local = self.cache.get(&st.image_id, cc).filter(|id| {
            let images = self.images.clone();
            let check = id.clone();
            blocking(move || images.resolve(&check)).is_ok()
        });
        let found = if self.options.cache_from.is_empty() {
            local
        } else {
            self.probe_cache_from(st, cc, local).await?
        };
        let Some(id) = found else {
            self.cache_busted = true;
            return Ok(false);
        };
        // The cached image's config carries what this step set (its `config`).
        let args = std::mem::take(&mut st.args);
        let cmd_set = st.cmd_set;
        self.load_image(st, &id)?;
        st.args = args;
        st.cmd_set = cmd_set;
        self.say(" ---> Using cache\n");
        Ok(true)
    }

    /// Moby's `ImageCache.GetCache` for `--cache-from`: a step of the local cache counts when
    /// its image is one of the sources or an ancestor of one; otherwise a source whose
    /// history extends the stage's image with this very command gives the step, the source
    /// itself at its last step, else an image restored from the source's layer and history
    /// entry (the build then follows that source alone).
    async fn probe_cache_from(
        &mut self,
        st: &StageState,
        cc: &Value,
        local: Option<String>,
    ) -> Result<Option<String>, BuildError> {
        if self.cache_sources.is_none() {
            let images = self.images.clone();
            let refs = self.options.cache_from.clone();
            let ids = blocking(move || {
                refs.iter()
                    .filter_map(|r| images.resolve(r).ok().map(|i| i.id))
                    .collect::<Vec<_>>()
            });
            self.cache_sources = Some(ids);
        }
        let sources = self.cache_sources.clone().unwrap_or_default();
        if let Some(id) = local {
            for source in &sources {
                if self.is_ancestor(&id, source) {
                    return Ok(Some(id));
                }
            }
        }
        let parent = if st.image_id.is_empty() {
            None
        } else {
            Some(self.read_config(&st.image_id)?)
        };
        let parent_history = history_of(parent.as_ref());
        let parent_layers = diff_ids_of(parent.as_ref());
        let created_by = strings(cc.get("Cmd")).join(" ");
        for source in &sources {
            let target = self.read_config(source)?;
            let history = history_of(Some(&target));
            let layers = diff_ids_of(Some(&target));
            let n = parent_history.len();
            let extends = !history.is_empty()
                && (parent.is_none()
                    || (parent_history.is_empty() && parent_layers.is_empty())
                    || (n < history.len()
                        && parent_layers.len() <= layers.len()
                        && history[..n] == parent_history[..]
                        && layers[..parent_layers.len()] == parent_layers[..]));
            if !extends
                || n >= history.len()
                || history[n]
                    .get("created_by")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    != created_by
            {
                continue;
            }
            if history.len() - 1 == n {
                return Ok(Some(source.clone()));
            }
            let id = self.restore(st, cc, &target, n).await?;
            self.cache_sources = Some(vec![source.clone()]);
            return Ok(Some(id));
        }
        Ok(None)
    }

    /// A new image: the stage's image plus the history entry `step` of `target` (its layer, when the
    /// step made one, exported from the store byte for byte, so the diff id is the same).
    async fn restore(
        &mut self,
        st: &StageState,
        cc: &Value,
        target: &Map<String, Value>,
        step: usize,
    ) -> Result<String, BuildError> {
        let entries = history_of(Some(target));
        let entry = entries
            .get(step)
            .cloned()
            .ok_or_else(|| invalid("cache source history is too short"))?;
        let history: HistoryEntry = serde_json::from_value(entry)
            .map_err(|e| invalid(format!("cache source history: {e}")))?;
        // The step's layer is the one after those of the non-empty steps before it.
        let index = entries[..step]
            .iter()
            .filter(|h| {
                !h.get("empty_layer")
                    .and_then(Value::as_bool)
                    .unwrap_or(false)
            })
            .count();
        let staging = self.staging("restore")?;
        let mut layer = None;
        if !history.empty_layer {
            let diff_id = diff_ids_of(Some(target))
                .get(index)
                .cloned()
                .ok_or_else(|| invalid("cache source has fewer layers than its history"))?;
            let tar_path = staging.path.join("layer.tar");
            let file = fs::File::create(&tar_path).map_err(io_err(&tar_path))?;
            let images = self.images.clone();
            blocking(move || images.write_layer(&diff_id, std::io::BufWriter::new(file)))
                .map_err(BuildError::Image)?;
            layer = Some(fs::File::open(&tar_path).map_err(io_err(&tar_path))?);
        }
        let mut config = Map::new();
        for key in ["architecture", "os", "author", "variant"] {
            if let Some(v) = target.get(key) {
                config.insert(key.into(), v.clone());
            }
        }
        config.insert("config".into(), Value::Object(st.run.clone()));
        config.insert("container_config".into(), cc.clone());
        config.insert("created".into(), json!(history.created));
        config.insert("docker_version".into(), json!(crate::api::types::VERSION));
        let new = NewImage {
            parent: (!st.image_id.is_empty()).then(|| st.image_id.clone()),
            config: Value::Object(config),
            steps: vec![NewStep {
                layer: layer
                    .map(|f| Box::new(std::io::BufReader::new(f)) as Box<dyn std::io::Read>),
                history: HistoryEntry {
                    empty_layer: false,
                    ..history
                },
            }],
            tag: None,
        };
        let images = self.images.clone();
        let id = blocking(move || images.create_image(new)).map_err(BuildError::Image)?;
        drop(staging);
        Ok(id)
    }

    /// Whether `id` is `image` or one of its parents.
    fn is_ancestor(&self, id: &str, image: &str) -> bool {
        let mut current = image.to_string();
        // Parent chains are short; the bound only guards against a corrupt loop.
        for _ in 0..1000 {
            if current == id {
                return true;
            }
            let images = self.images.clone();
            let of = current.clone();
            match blocking(move || images.inspect(&of)) {
                Ok(i) if !i.parent.is_empty() => current = i.parent,
                _ => return false,
            }
        }
        false
    }

    /// An image's config, as stored.
    fn read_config(&self, id: &str) -> Result<Map<String, Value>, BuildError> {
        let hex = id.strip_prefix("sha256:").unwrap_or(id);
        let path = self.data_root.join("image/blobs/sha256").join(hex);
        let bytes = fs::read(&path).map_err(io_err(&path))?;
        serde_json::from_slice(&bytes).map_err(|e| invalid(format!("image config {id}: {e}")))
    }

    async fn commit_nop(&mut self, st: &mut StageState, comment: &str) -> Result<(), BuildError> {
        let cc = self.container_config(st, nop_cmd(st, comment));
        if self.probe(st, &cc).await? {
            return Ok(());
        }
        self.commit(st, cc, None).await
    }

    fn staging(&self, kind: &str) -> Result<Staging, BuildError> {
        let path = self
            .data_root
            .join("tmp")
            .join(format!("build-{kind}-{:016x}", rand::random::<u64>()));
        fs::create_dir_all(&path).map_err(io_err(&path))?;
        Ok(Staging { path })
    }

    /// Stores a new image: the stage's config with `container_config` `cc`, one history line,
    /// and the layer of the tree `layer` (none: an empty layer), through the store's
    /// `create_image` (which adds `rootfs` and `history`).
    async fn commit(
        &mut self,
        st: &mut StageState,
        cc: Value,
        layer: Option<&Path>,
    ) -> Result<(), BuildError> {
        let staging = self.staging("commit")?;
        let mut layer_file = None;
        if let Some(tree) = layer {
            let tar_path = staging.path.join("layer.tar");
            let file = fs::File::create(&tar_path).map_err(io_err(&tar_path))?;
            let exported = blocking(|| write_layer_tar(tree, std::io::BufWriter::new(file)))
                .map_err(BuildError::Image)?;
            if exported.diff_id != EMPTY_LAYER_DIFF_ID {
                layer_file = Some(fs::File::open(&tar_path).map_err(io_err(&tar_path))?);
            }
        }
        let created_by = strings(cc.get("Cmd")).join(" ");
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
        let mut config = st.config.clone();
        config.insert("config".into(), Value::Object(st.run.clone()));
        config.insert("container_config".into(), cc.clone());
        config.insert("created".into(), json!(now));
        config.insert("docker_version".into(), json!(crate::api::types::VERSION));
        config.remove("container");
        let author = config
            .get("author")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let new = NewImage {
            parent: (!st.image_id.is_empty()).then(|| st.image_id.clone()),
            config: Value::Object(config),
            steps: vec![NewStep {
                layer: layer_file
                    .map(|f| Box::new(std::io::BufReader::new(f)) as Box<dyn std::io::Read>),
                history: HistoryEntry {
                    created: now,
                    created_by,
                    author,
                    ..Default::default()
                },
            }],
            tag: None,
        };
        let images = self.images.clone();
        let id = blocking(move || images.create_image(new)).map_err(BuildError::Image)?;
        drop(staging);
        self.cache.put(&st.image_id, &cc, &id)?;
        let args = std::mem::take(&mut st.args);
        let cmd_set = st.cmd_set;
        self.load_image(st, &id)?;
        st.args = args;
        st.cmd_set = cmd_set;
        Ok(())
    }

    async fn run(&mut self, st: &mut StageState, command: &CommandLine) -> Result<(), BuildError> {
        if st.image_id.is_empty() {
            return Err(invalid(
                "Please provide a source image with `from` prior to run",
            ));
        }
        let cmd = self.resolve_command(st, command);
        let arg_env = st.arg_env();
        let mut save_cmd = cmd.clone();
        if !arg_env.is_empty() {
            let mut shown: Vec<String> = arg_env
                .iter()
                .filter(|e| {
                    let k = e.split('=').next().unwrap_or_default();
                    st.args.contains_key(k) || !BUILTIN_ARGS.contains(&k)
                })
                .cloned()
                .collect();
            shown.sort();
            let mut v = vec![format!("|{}", shown.len())];
            v.extend(shown);
            v.extend(cmd.clone());
            save_cmd = v;
        }
        let cc = self.container_config(st, save_cmd);
        if self.probe(st, &cc).await? {
            return Ok(());
        }
        let mut env = st.env();
        env.extend(arg_env);
        // Proxy args reach RUN without an ARG line, and stay out of the cache key and the
        // image (moby's builtinAllowedBuildArgs).
        for name in BUILTIN_ARGS {
            let set = |e: &String| e.split('=').next() == Some(*name);
            if st.args.contains_key(*name) || env.iter().any(set) {
                continue;
            }
            if let Some(Some(v)) = self.options.build_args.get(*name) {
                env.push(format!("{name}={v}"));
            }
        }
        let mut config = st.run.clone();
        config.insert("Image".into(), json!(st.image_id));
        config.insert("Cmd".into(), json!(cmd));
        config.insert("Env".into(), json!(env));
        config.insert("Entrypoint".into(), json!([""]));
        config.insert("Healthcheck".into(), Value::Null);
        config.insert("AttachStdout".into(), json!(true));
        config.insert("AttachStderr".into(), json!(true));
        config.insert("OnBuild".into(), Value::Null);
        let request = CreateRequest {
            name: None,
            config: serde_json::from_value(Value::Object(config))
                .map_err(|e| invalid(format!("build container config: {e}")))?,
            host_config: serde_json::from_value(Value::Object(self.options.host_config.clone()))
                .map_err(|e| invalid(format!("build container host config: {e}")))?,
            networking_config: Default::default(),
        };
        let created = self.engine.create(request).await.map_err(engine_err)?;
        let id = created.id;
        self.say(format!(" ---> Running in {}\n", short_id(&id)));
        let result = self.run_container(&id).await;
        let outcome = match result {
            Ok(0) => {
                let upper = self.data_root.join("containers").join(&id).join("upper");
                self.commit(st, cc, Some(&upper)).await
            }
            Ok(code) => Err(BuildError::CommandFailed {
                command: cmd.join(" "),
                code,
            }),
            Err(e) => Err(e),
        };
        if self.options.force_remove || (self.options.remove && outcome.is_ok()) {
            match self.engine.remove(&id, true).await {
                Ok(()) => self.say(format!(
                    " ---> Removed intermediate container {}\n",
                    short_id(&id)
                )),
                Err(e) => self.say(format!(
                    "Removing intermediate container {}: {e}\n",
                    short_id(&id)
                )),
            }
        }
        outcome
    }

    /// Starts a build container, streams its output, and returns its exit code. When the
    /// client goes away meanwhile, the container is killed and removed.
    async fn run_container(&self, id: &str) -> Result<i64, BuildError> {
        let mut session = self
            .engine
            .attach(id, false, true, true)
            .map_err(engine_err)?;
        let wait = self
            .engine
            .wait(id, WaitCondition::NextExit)
            .map_err(engine_err)?;
        self.engine.start(id).await.map_err(engine_err)?;
        let mut cancel = self.cancel.clone();
        let pump = async {
            while let Some(output) = session.output.recv().await {
                self.say(String::from_utf8_lossy(&output.data).into_owned());
            }
            wait.await
        };
        tokio::select! {
            code = pump => Ok(code),
            () = async {
                // A dropped sender is no cancellation: wait on forever then.
                if cancel.wait_for(|c| *c).await.is_err() {
                    std::future::pending::<()>().await;
                }
            } => {
                if let Err(e) = self.engine.remove(id, true).await {
                    tracing::warn!(container = %id, error = %e, "cannot remove a cancelled build's container");
                }
                Err(BuildError::Cancelled)
            }
        }
    }

    async fn copy(
        &mut self,
        st: &mut StageState,
        spec: &CopySpec,
        is_add: bool,
        escape: char,
    ) -> Result<(), BuildError> {
        let name = if is_add { "ADD" } else { "COPY" };
        let env = st.expansion_env();
        let mut sources = Vec::new();
        for s in &spec.sources {
            sources.push(process_word(s, &env, escape)?);
        }
        let dest = process_word(&spec.dest, &env, escape)?;
        let chown = spec
            .chown
            .as_deref()
            .map(|c| process_word(c, &env, escape))
            .transpose()?;
        let chmod = match spec.chmod.as_deref() {
            None | Some("") => None,
            Some(m) => Some(u32::from_str_radix(m, 8).ok().filter(|m| *m <= 0o7777).ok_or_else(|| {
                invalid(format!("invalid chmod parameter: {m}. it should be octal string and between 0 and 07777"))
            })?),
        };
        // ADD's URLs are fetched at every build (the cache compares what they hold), into
        // files named after the URL, never extracted (moby's downloadSource).
        let mut downloads = None;
        let mut fetched: Vec<PathBuf> = Vec::new();
        if is_add && sources.iter().any(|s| super::remote::is_url(s)) {
            let dir = self.staging("remote")?;
            for url in sources.iter().filter(|s| super::remote::is_url(s)) {
                fetched.push(self.fetch_source(url, &dest, &dir.path).await?);
            }
            sources.retain(|s| !super::remote::is_url(s));
            downloads = Some(dir);
        } else if sources.iter().any(|s| super::remote::is_url(s)) {
            // COPY reads the context only; moby's errOnSourceDownload.
            return Err(invalid("COPY failed: source can't be a URL for COPY"));
        }

        // Where the sources are read from: the context, or a stage's or image's files.
        let from_root;
        let source_root: &Path = match &spec.from {
            None => self.context.root(),
            Some(from) => {
                let from = process_word(from, &env, escape)?;
                let id = match self.stages.get(&from.to_ascii_lowercase()) {
                    Some(id) => id.clone(),
                    None => {
                        let images = self.images.clone();
                        let f = from.clone();
                        blocking(move || images.resolve(&f))
                            .map_err(|_| {
                                invalid(format!(
                                    "invalid from flag value {from}: No such image: {from}"
                                ))
                            })?
                            .id
                    }
                };
                // Every source is checked before any of the image is copied.
                let mut rels = Vec::new();
                for s in &sources {
                    if s.contains(['*', '?', '[']) {
                        return Err(BuildError::Unsupported {
                            what: format!("a wildcard in COPY --from ({s})"),
                        });
                    }
                    rels.push(relative(s).ok_or_else(|| {
                        invalid(format!("forbidden path outside the build context: {s} ()"))
                    })?);
                }
                let images = self.images.clone();
                let layers =
                    blocking(move || images.rootfs_layers(&id)).map_err(BuildError::Image)?;
                let staging = self.staging("from")?;
                for rel in &rels {
                    materialize(&layers, rel, &staging.path)?;
                }
                from_root = staging;
                from_root.path.as_path()
            }
        };

        // Expand wildcards and check every source exists.
        let mut matched: Vec<PathBuf> = Vec::new();
        for s in &sources {
            let rel = relative(s).ok_or_else(|| {
                invalid(format!("forbidden path outside the build context: {s} ()"))
            })?;
            if s.contains(['*', '?', '[']) {
                let found = glob(source_root, &rel)?;
                if found.is_empty() {
                    return Err(invalid(format!(
                        "{name} failed: no source files were specified"
                    )));
                }
                matched.extend(found);
            } else {
                let path = if spec.from.is_none() {
                    self.context.resolve(&rel)?
                } else {
                    source_root.join(&rel)
                };
                if fs::symlink_metadata(&path).is_err() {
                    return Err(invalid(format!(
                        "{name} failed: file not found in build context or excluded by .dockerignore: stat {s}: file does not exist"
                    )));
                }
                matched.push(rel);
            }
        }
        let workdir = st
            .run
            .get("WorkingDir")
            .and_then(Value::as_str)
            .unwrap_or("/")
            .to_string();
        let dest_abs = if dest.starts_with('/') {
            dest.clone()
        } else {
            format!("{}/{dest}", workdir.trim_end_matches('/'))
        };
        let dest_rel = relative(&dest_abs).unwrap_or_default();
        let dest_is_dir = dest.ends_with('/')
            || dest == "."
            || dest_rel.as_os_str().is_empty()
            || matches!(lookup(&st.layers, &dest_rel), Some(Kind::Dir));
        if matched.len() + fetched.len() + spec.heredocs.len() > 1 && !dest_is_dir {
            return Err(invalid(format!(
                "When using {name} with more than one source file, the destination must be a directory and end with a /"
            )));
        }
        let owner = match &chown {
            None => None,
            Some(c) => Some(
                crate::container::config::resolve_user(c, &st.layers)
                    .map(|u| (u.uid, u.gid))
                    .map_err(|e| {
                        invalid(format!(
                            "unable to convert uid/gid chown string to host mapping: {e}"
                        ))
                    })?,
            ),
        };

        let staging = self.staging("copy")?;
        let mut hasher = Sha256::new();
        let mut kinds = Vec::new();
        for rel in &matched {
            let src = if spec.from.is_none() {
                self.context.resolve(rel)?
            } else {
                source_root.join(rel)
            };
            let meta = fs::symlink_metadata(&src).map_err(io_err(&src))?;
            let base = rel.file_name().map(PathBuf::from).unwrap_or_default();
            if meta.is_dir() {
                kinds.push("dir");
                if let Some(parent) = dest_rel.parent() {
                    make_dirs(&staging.path, parent)?;
                }
                let target = staging.path.join(&dest_rel);
                copy_tree(&src, &target, owner, chmod, &mut hasher, Path::new(""))?;
            } else if is_add && is_archive(&src) {
                kinds.push("file");
                let target = make_dirs(&staging.path, &dest_rel)?;
                let file = fs::File::open(&src).map_err(io_err(&src))?;
                hash_file(&src, &mut hasher)?;
                let reader = crate::image::layer::decompress(file, &rel.to_string_lossy())
                    .map_err(BuildError::Image)?;
                crate::image::layer::extract_with_split(
                    reader,
                    &target,
                    &rel.to_string_lossy(),
                    None,
                )
                .map_err(BuildError::Image)?;
            } else {
                kinds.push("file");
                let target_rel = if dest_is_dir {
                    dest_rel.join(&base)
                } else {
                    dest_rel.clone()
                };
                if let Some(parent) = target_rel.parent() {
                    make_dirs(&staging.path, parent)?;
                }
                let target = staging.path.join(&target_rel);
                copy_entry(&src, &target, owner, chmod, &mut hasher, &base)?;
            }
        }
        for name in &fetched {
            let Some(dir) = &downloads else { break };
            kinds.push("file");
            let target_rel = if dest_is_dir {
                dest_rel.join(name)
            } else {
                dest_rel.clone()
            };
            if let Some(parent) = target_rel.parent() {
                make_dirs(&staging.path, parent)?;
            }
            let target = staging.path.join(&target_rel);
            copy_entry(
                &dir.path.join(name),
                &target,
                owner,
                chmod,
                &mut hasher,
                name,
            )?;
        }
        // Heredocs are files named after their delimiter, 0644 unless --chmod (BuildKit's).
        for doc in &spec.heredocs {
            kinds.push("file");
            let content = if doc.expand {
                super::substitution::process_heredoc(&doc.content, &env, escape)?
            } else {
                doc.content.clone()
            };
            let target_rel = if dest_is_dir {
                dest_rel.join(&doc.name)
            } else {
                dest_rel.clone()
            };
            if let Some(parent) = target_rel.parent() {
                make_dirs(&staging.path, parent)?;
            }
            let target = staging.path.join(&target_rel);
            let mut file = create_file(&target)?;
            file.write_all(content.as_bytes())
                .map_err(io_err(&target))?;
            file.set_permissions(fs::Permissions::from_mode(chmod.unwrap_or(0o644)))
                .map_err(io_err(&target))?;
            let (uid, gid) = owner.unwrap_or((0, 0));
            std::os::unix::fs::lchown(&target, Some(uid), Some(gid)).map_err(io_err(&target))?;
            hasher.update(doc.name.as_bytes());
            hasher.update(content.as_bytes());
        }
        hasher.update(format!("{chown:?}{chmod:?}").as_bytes());
        let prefix = match kinds.as_slice() {
            [one] => *one,
            _ => "multi",
        };
        let src_hash = format!("{prefix}:{}", hex::encode(hasher.finalize()));
        let comment = format!("{name} {src_hash} in {dest} ");
        let mut cmd = st.shell();
        cmd.push(format!("#(nop) {comment}"));
        let cc = self.container_config(st, cmd);
        if self.probe(st, &cc).await? {
            return Ok(());
        }
        self.commit(st, cc, Some(&staging.path)).await
    }
}

impl Builder<'_> {
    /// Downloads an ADD source into `dir` as moby does: named after the URL's percent-decoded
    /// last path element (else its `Content-Disposition` filename), mode 0600, mtime the
    /// `Last-Modified` header or else the epoch, its progress shown; returns the file's name.
    async fn fetch_source(&self, url: &str, dest: &str, dir: &Path) -> Result<PathBuf, BuildError> {
        let mut cancel = self.cancel.clone();
        let fetching = tokio::select! {
            fetching = super::remote::get(url) => fetching?,
            () = super::remote::cancelled(Some(&mut cancel)) => return Err(BuildError::Cancelled),
        };
        let name = match super::remote::download_name(url, fetching.disposition_name.as_deref()) {
            // A name that would not be a file of `dir` is refused as moby's open fails.
            Some(n) if n != "." && n != ".." => PathBuf::from(n),
            Some(n) => {
                return Err(invalid(format!(
                    "cannot determine filename for source {url} ({})",
                    n.to_string_lossy()
                )))
            }
            None if dest.ends_with('/') => {
                return Err(invalid(format!(
                    "cannot determine filename for source {url}"
                )))
            }
            None => PathBuf::from("__unnamed__"),
        };
        let file = dir.join(&name);
        let out = self.out.clone();
        let mut report = |current: u64, total: Option<u64>, done: bool| {
            let _ = out.send(Progress::Download {
                current,
                total,
                done,
            });
        };
        let fetched = fetching.save(&file, &mut report, Some(cancel)).await?;
        self.say("\n");
        let mtime = fetched.last_modified.unwrap_or(std::time::UNIX_EPOCH);
        let opened = fs::File::open(&file).map_err(io_err(&file))?;
        opened
            .set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(io_err(&file))?;
        opened
            .set_times(fs::FileTimes::new().set_modified(mtime))
            .map_err(io_err(&file))?;
        Ok(name)
    }
}

/// An image config's `history`.
fn history_of(config: Option<&Map<String, Value>>) -> Vec<Value> {
    config
        .and_then(|c| c.get("history"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// An image config's `rootfs.diff_ids`.
fn diff_ids_of(config: Option<&Map<String, Value>>) -> Vec<String> {
    strings(
        config
            .and_then(|c| c.get("rootfs"))
            .and_then(|r| r.get("diff_ids")),
    )
}

/// Whether a RUN line is one heredoc marker and nothing else (`<<EOF`, `<<-"EOF"`).
fn is_lone_heredoc(line: &str) -> bool {
    let words: Vec<&str> = line.split_whitespace().collect();
    matches!(words.as_slice(), [w] if w.starts_with("<<"))
}

/// A scratch directory of a build step, deleted on drop.
struct Staging {
    path: PathBuf,
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Runs blocking file work without stalling the async workers.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// `[shell…, "#(nop) ", comment]`: dockerd's Cmd for a config-only step.
fn nop_cmd(st: &StageState, comment: &str) -> Vec<String> {
    let mut cmd = st.shell();
    cmd.push("#(nop) ".into());
    cmd.push(comment.to_string());
    cmd
}

/// Go's `%q` of a string slice: `["a" "b"]`.
fn go_quote_list(items: &[String]) -> String {
    let quoted: Vec<String> = items
        .iter()
        .map(|s| serde_json::to_string(s).unwrap_or_default())
        .collect();
    format!("[{}]", quoted.join(" "))
}

/// Go's `time.Duration` string for whole units (`30s`, `1m30s`, `0s`).
fn go_duration(ns: i64) -> String {
    if ns == 0 {
        return "0s".into();
    }
    if ns % 1_000_000_000 != 0 {
        return format!("{}ms", ns / 1_000_000);
    }
    let mut secs = ns / 1_000_000_000;
    let mut out = String::new();
    if secs >= 3600 {
        out.push_str(&format!("{}h", secs / 3600));
        secs %= 3600;
        out.push_str(&format!("{}m", secs / 60));
        secs %= 60;
    } else if secs >= 60 {
        out.push_str(&format!("{}m", secs / 60));
        secs %= 60;
    }
    out.push_str(&format!("{secs}s"));
    out
}

fn health_json(spec: &HealthSpec) -> Value {
    let mut h = json!({"Test": spec.test});
    for (key, v) in [
        ("Interval", spec.interval),
        ("Timeout", spec.timeout),
        ("StartPeriod", spec.start_period),
        ("StartInterval", spec.start_interval),
        ("Retries", spec.retries),
    ] {
        if v != 0 {
            h[key] = json!(v);
        }
    }
    h
}

/// The `%v` of moby's HealthConfig, for the step's `#(nop)` line.
fn health_go(spec: &HealthSpec) -> String {
    format!(
        "{} {:?} {:?} {:?} {:?} '\\x{:02x}'",
        go_quote_list(&spec.test),
        go_duration(spec.interval),
        go_duration(spec.timeout),
        go_duration(spec.start_period),
        go_duration(spec.start_interval),
        spec.retries
    )
}

/// `80`, `80/udp`, `8000-8002/tcp` → `80/tcp` … keys, as nat.ParsePortSpecs.
fn port_keys(spec: &str) -> Result<Vec<String>, BuildError> {
    let (ports, proto) = spec.split_once('/').unwrap_or((spec, "tcp"));
    let proto = proto.to_ascii_lowercase();
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        return Err(invalid(format!("invalid proto: {proto}")));
    }
    let bad = || invalid(format!("invalid containerPort: {ports}"));
    let (lo, hi) = match ports.split_once('-') {
        Some((a, b)) => (
            a.parse::<u16>().map_err(|_| bad())?,
            b.parse::<u16>().map_err(|_| bad())?,
        ),
        None => {
            let p = ports.parse::<u16>().map_err(|_| bad())?;
            (p, p)
        }
    };
    if hi < lo {
        return Err(bad());
    }
    Ok((lo..=hi).map(|p| format!("{p}/{proto}")).collect())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    Other,
}

fn is_whiteout(meta: &fs::Metadata) -> bool {
    use std::os::unix::fs::FileTypeExt;
    meta.file_type().is_char_device() && meta.rdev() == 0
}

fn is_opaque(dir: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    let mut buf = [0u8; 4];
    // SAFETY: both strings are NUL-terminated and live for the call; `buf` is valid for
    // `buf.len()` bytes of output.
    let n = unsafe {
        libc::lgetxattr(
            c.as_ptr(),
            c"trusted.overlay.opaque".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    n == 1 && buf[0] == b'y'
}

/// What an image's merged file system holds at `rel` (layers topmost first).
fn lookup(layers: &[PathBuf], rel: &Path) -> Option<Kind> {
    for layer in layers {
        let mut hidden = false;
        let mut prefix = PathBuf::new();
        let comps: Vec<_> = rel.components().collect();
        for comp in &comps[..comps.len().saturating_sub(1)] {
            prefix.push(comp);
            if let Ok(m) = fs::symlink_metadata(layer.join(&prefix)) {
                if is_whiteout(&m) || !m.is_dir() {
                    return None;
                }
                if is_opaque(&layer.join(&prefix)) {
                    hidden = true;
                }
            }
        }
        match fs::symlink_metadata(layer.join(rel)) {
            Ok(m) if is_whiteout(&m) => return None,
            Ok(m) if m.is_dir() => return Some(Kind::Dir),
            Ok(_) => return Some(Kind::Other),
            Err(_) if hidden => return None,
            Err(_) => {}
        }
    }
    None
}

/// Writes the merged view of `rel` (layers topmost first) under `out/rel`.
/// A symlink in a layer is copied as one, never followed: a path through a layer's symlink
/// is not in that layer.
fn materialize(layers: &[PathBuf], rel: &Path, out: &Path) -> Result<(), BuildError> {
    // Real directories above the target, so nothing below writes through a link copied by an
    // earlier source.
    if let Some(parent) = rel.parent() {
        make_dirs(out, parent)?;
    }
    let target = out.join(rel);
    'layers: for layer in layers.iter().rev() {
        let mut prefix = PathBuf::new();
        let comps: Vec<_> = rel.components().collect();
        for comp in &comps[..comps.len().saturating_sub(1)] {
            prefix.push(comp);
            if let Ok(m) = fs::symlink_metadata(layer.join(&prefix)) {
                if is_whiteout(&m) || !m.is_dir() {
                    remove_any(&target)?;
                    continue 'layers;
                }
                if is_opaque(&layer.join(&prefix)) {
                    remove_any(&target)?;
                }
            }
        }
        let src = layer.join(rel);
        let Ok(meta) = fs::symlink_metadata(&src) else {
            continue;
        };
        if is_whiteout(&meta) {
            remove_any(&target)?;
        } else if meta.is_dir() {
            if is_opaque(&src) || !is_real_dir(&target) {
                remove_any(&target)?;
            }
            merge_dir(&src, &target)?;
        } else {
            remove_any(&target)?;
            copy_entry(&src, &target, None, None, &mut Sha256::new(), Path::new(""))?;
        }
    }
    Ok(())
}

/// Whether `path` is a directory itself, not a symlink to one.
fn is_real_dir(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.is_dir())
}

// The staging trees below are private to the build and written by this thread only, so an
// lstat then an operation on the same path cannot be raced; what they must never do is follow
// a symlink that an earlier source, layer or heredoc put there.

/// Makes `root/rel` a directory, one name at a time, replacing whatever non-directory is in
/// the way (a symlink is replaced, never followed, as Docker's copy does).
fn make_dirs(root: &Path, rel: &Path) -> Result<PathBuf, BuildError> {
    let mut current = root.to_path_buf();
    for comp in rel.components() {
        if let std::path::Component::Normal(part) = comp {
            current.push(part);
            make_dir(&current)?;
        }
    }
    Ok(current)
}

/// Makes `path` a directory (its parent being one); true when it already was.
fn make_dir(path: &Path) -> Result<bool, BuildError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => return Ok(true),
        Ok(_) => fs::remove_file(path).map_err(io_err(path))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(path)(e)),
    }
    fs::create_dir(path).map_err(io_err(path))?;
    Ok(false)
}

/// Creates the file `path`, replacing a non-directory there and never opening through a
/// symlink.
fn create_file(path: &Path) -> Result<fs::File, BuildError> {
    if fs::symlink_metadata(path).is_ok_and(|m| !m.is_dir()) {
        fs::remove_file(path).map_err(io_err(path))?;
    }
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o600)
        .open(path)
        .map_err(io_err(path))
}

fn remove_any(path: &Path) -> Result<(), BuildError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path).map_err(io_err(path)),
        Ok(_) => fs::remove_file(path).map_err(io_err(path)),
        Err(_) => Ok(()),
    }
}

fn merge_dir(src: &Path, dst: &Path) -> Result<(), BuildError> {
    make_dir(dst)?;
    let meta = fs::symlink_metadata(src).map_err(io_err(src))?;
    fs::set_permissions(dst, fs::Permissions::from_mode(meta.mode() & 0o7777))
        .map_err(io_err(dst))?;
    for entry in fs::read_dir(src).map_err(io_err(src))? {
        let entry = entry.map_err(io_err(src))?;
        let s = entry.path();
        let d = dst.join(entry.file_name());
        let m = fs::symlink_metadata(&s).map_err(io_err(&s))?;
        if is_whiteout(&m) {
            remove_any(&d)?;
        } else if m.is_dir() {
            if is_opaque(&s) || !is_real_dir(&d) {
                remove_any(&d)?;
            }
            merge_dir(&s, &d)?;
        } else {
            remove_any(&d)?;
            copy_entry(&s, &d, None, None, &mut Sha256::new(), Path::new(""))?;
        }
    }
    Ok(())
}

fn hash_file(path: &Path, hasher: &mut Sha256) -> Result<(), BuildError> {
    let mut f = fs::File::open(path).map_err(io_err(path))?;
    std::io::copy(&mut f, hasher).map_err(io_err(path))?;
    Ok(())
}

/// Copies one non-directory entry (file or symlink), hashing its name, mode and content.
fn copy_entry(
    src: &Path,
    dst: &Path,
    owner: Option<(u32, u32)>,
    chmod: Option<u32>,
    hasher: &mut Sha256,
    name: &Path,
) -> Result<(), BuildError> {
    let meta = fs::symlink_metadata(src).map_err(io_err(src))?;
    if fs::symlink_metadata(dst).is_ok_and(|m| !m.is_dir()) {
        fs::remove_file(dst).map_err(io_err(dst))?;
    }
    hasher.update(name.as_os_str().as_encoded_bytes());
    hasher.update(meta.mode().to_le_bytes());
    if meta.file_type().is_symlink() {
        let target = fs::read_link(src).map_err(io_err(src))?;
        hasher.update(target.as_os_str().as_encoded_bytes());
        std::os::unix::fs::symlink(&target, dst).map_err(io_err(dst))?;
    } else if meta.is_file() {
        hash_file(src, hasher)?;
        let mut from = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(src)
            .map_err(io_err(src))?;
        let mut to = create_file(dst)?;
        std::io::copy(&mut from, &mut to).map_err(io_err(dst))?;
        let mode = chmod.unwrap_or(meta.mode() & 0o7777);
        to.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(io_err(dst))?;
        let mtime = meta.modified().map_err(io_err(src))?;
        to.set_times(fs::FileTimes::new().set_modified(mtime))
            .map_err(io_err(dst))?;
    } else {
        // Devices, fifos and sockets are not copied, as with dockerd's COPY.
        return Ok(());
    }
    let (uid, gid) = owner.unwrap_or((0, 0));
    std::os::unix::fs::lchown(dst, Some(uid), Some(gid)).map_err(io_err(dst))?;
    Ok(())
}

fn set_mtime(path: &Path, meta: &fs::Metadata) -> Result<(), BuildError> {
    let mtime = meta.modified().map_err(io_err(path))?;
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(io_err(path))?;
    file.set_times(fs::FileTimes::new().set_modified(mtime))
        .map_err(io_err(path))
}

/// Copies a directory's contents into `dst` (made if missing).
fn copy_tree(
    src: &Path,
    dst: &Path,
    owner: Option<(u32, u32)>,
    chmod: Option<u32>,
    hasher: &mut Sha256,
    name: &Path,
) -> Result<(), BuildError> {
    let existed = make_dir(dst)?;
    let meta = fs::symlink_metadata(src).map_err(io_err(src))?;
    if !existed || !name.as_os_str().is_empty() {
        let mode = chmod.unwrap_or(meta.mode() & 0o7777);
        fs::set_permissions(dst, fs::Permissions::from_mode(mode)).map_err(io_err(dst))?;
        let (uid, gid) = owner.unwrap_or((0, 0));
        std::os::unix::fs::lchown(dst, Some(uid), Some(gid)).map_err(io_err(dst))?;
    }
    let mut entries: Vec<_> = fs::read_dir(src)
        .map_err(io_err(src))?
        .collect::<Result<_, _>>()
        .map_err(io_err(src))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let s = entry.path();
        let d = dst.join(entry.file_name());
        let n = name.join(entry.file_name());
        let m = fs::symlink_metadata(&s).map_err(io_err(&s))?;
        if m.is_dir() {
            hasher.update(n.as_os_str().as_encoded_bytes());
            hasher.update(b"/");
            copy_tree(&s, &d, owner, chmod, hasher, &n)?;
            set_mtime(&d, &m)?;
        } else {
            copy_entry(&s, &d, owner, chmod, hasher, &n)?;
        }
    }
    Ok(())
}

/// Whether ADD extracts this file: a tar, plain or gzip-compressed.
fn is_archive(path: &Path) -> bool {
    let Ok(mut f) = fs::File::open(path) else {
        return false;
    };
    let mut head = [0u8; 512];
    let n = std::io::Read::read(&mut f, &mut head).unwrap_or(0);
    if n >= 2 && head[..2] == [0x1f, 0x8b] {
        return true;
    }
    n == 512 && &head[257..262] == b"ustar"
}

/// Context paths matching a pattern with wildcards in any of its elements, sorted.
fn glob(root: &Path, pattern: &Path) -> Result<Vec<PathBuf>, BuildError> {
    let mut found = vec![PathBuf::new()];
    for comp in pattern.components() {
        let part = comp.as_os_str().to_string_lossy().into_owned();
        let mut next = Vec::new();
        for base in &found {
            if !part.contains(['*', '?', '[']) {
                let p = base.join(&part);
                if fs::symlink_metadata(root.join(&p)).is_ok() {
                    next.push(p);
                }
                continue;
            }
            let re = regex::Regex::new(&super::dockerignore::glob_regex(&part))
                .map_err(|e| invalid(format!("syntax error in pattern {part}: {e}")))?;
            let dir = root.join(base);
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if re.is_match(&name) {
                    next.push(base.join(name));
                }
            }
        }
        found = next;
    }
    found.sort();
    Ok(found)
}

/// The reference a `FROM` names, when it is one a registry could have: not an image id.
fn pullable_reference(base: &str) -> Option<Reference> {
    let lowered = base.trim_start_matches("sha256:");
    if crate::image::reference::is_full_hex(lowered) {
        return None;
    }
    Reference::parse_normalized(base)
        .ok()
        .map(Reference::with_default_tag)
}

/// The credentials `X-Registry-Config` holds for `domain` (keys are registry hosts, with or
/// without a scheme and path; Docker Hub's is `https://index.docker.io/v1/`); anonymous when
/// none matches.
fn registry_auth_for(
    configs: &BTreeMap<String, crate::image::registry::auth::AuthConfig>,
    domain: &str,
) -> crate::image::registry::auth::AuthConfig {
    let host_of = |key: &str| {
        let key = key
            .trim_start_matches("https://")
            .trim_start_matches("http://");
        key.split('/').next().unwrap_or(key).to_string()
    };
    let hub = |host: &str| {
        matches!(
            host,
            "docker.io" | "index.docker.io" | "registry-1.docker.io"
        )
    };
    configs
        .iter()
        .find(|(key, _)| {
            let host = host_of(key);
            host == domain || (hub(&host) && hub(domain))
        })
        .map(|(_, config)| config.clone())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_and_durations() {
        assert_eq!(port_keys("80").expect("ok"), vec!["80/tcp"]);
        assert_eq!(port_keys("53/UDP").expect("ok"), vec!["53/udp"]);
        assert_eq!(
            port_keys("8000-8002").expect("ok"),
            vec!["8000/tcp", "8001/tcp", "8002/tcp"]
        );
        assert!(port_keys("x").is_err());
        assert_eq!(go_duration(90_000_000_000), "1m30s");
        assert_eq!(go_duration(5_000_000_000), "5s");
        assert_eq!(
            go_quote_list(&["a b".into(), "c".into()]),
            "[\"a b\" \"c\"]"
        );
    }

    #[test]
    fn globbing() {
        let tmp = tempfile::tempdir().expect("tempdir");
        for f in ["a.txt", "b.txt", "c.md", "d/e.txt"] {
            let p = tmp.path().join(f);
            fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            fs::write(&p, "x").expect("write");
        }
        let got = glob(tmp.path(), Path::new("*.txt")).expect("globs");
        assert_eq!(got, vec![PathBuf::from("a.txt"), PathBuf::from("b.txt")]);
        let got = glob(tmp.path(), Path::new("*/e.*")).expect("globs");
        assert_eq!(got, vec![PathBuf::from("d/e.txt")]);
    }
}

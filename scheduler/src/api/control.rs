//! The operator API (`control.proto`): apps, deploys, builds, logs, releases,
//! rollbacks, nodes (drain, remove), cluster status and membership, app config and scale (`app_config.rs`). Input is validated here before anything is
//! written; every change is one raft write, so a request either fully happens or not.
//! Every string field is bounded (app names 63 bytes, refs 255, URLs 2048, ids 255; see
//! [`slipway_proto::validate`]) and whole requests are bounded by the server
//! ([`validate::MAX_CONTROL_REQUEST_BYTES`]), so nothing large reaches raft or an error.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use slipway_proto::deploy_event::Event;
use slipway_proto::tls::Role;
use slipway_proto::{self as pb, validate, DeployEvent};
use tokio::sync::broadcast::error::RecvError;
use tonic::{Request, Response, Status};

use crate::context::Context;
use crate::convert;
use crate::error::Error;
use crate::events::is_terminal;
use crate::placement::Liveness;
use crate::raft;
use crate::security::join_tokens;
use crate::state::{BuildState, Command, DeployState, Response as Applied, State};

/// The gRPC control service.
pub struct ControlService {
    ctx: Arc<Context>,
}

impl ControlService {
    /// The control API of the scheduler sharing `ctx`.
    pub fn new(ctx: Arc<Context>) -> Self {
        Self { ctx }
    }
}

pub(super) type EventStream = Pin<Box<dyn Stream<Item = Result<DeployEvent, Status>> + Send>>;
type LogStream = Pin<Box<dyn Stream<Item = Result<pb::LogLine, Status>> + Send>>;

/// Refuses an identifier field (request id, build id, node, address) longer than
/// [`validate::MAX_ID_BYTES`], before anything else reads it.
pub(super) fn bounded_id(what: &'static str, value: &str) -> Result<(), Error> {
    validate::bounded(what, value, validate::MAX_ID_BYTES).map_err(Error::from)
}

/// Every string of a `CreateApp` request, checked before anything is written.
fn check_create_app(req: &pb::CreateAppRequest) -> Result<(), Error> {
    validate::app_name(&req.name)?;
    validate::repo_url(&req.repo)?;
    if !req.branch.is_empty() {
        validate::git_ref(&req.branch)?;
    }
    Ok(())
}

/// Every string of a `Deploy` request, checked before the app is even looked up.
/// Why build `id` is not in the state: removed by the build retention (or with its
/// app), or never issued.
fn missing_build(s: &State, id: &str) -> Error {
    Error::NotFound(
        s.missing_build_reason(id)
            .unwrap_or_else(|| format!("build {id:?} not found; `slipway builds` lists them")),
    )
}

fn check_deploy(req: &pb::DeployRequest) -> Result<(), Error> {
    validate::app_name(&req.app)?;
    if !req.git_ref.is_empty() {
        validate::git_ref(&req.git_ref)?;
    }
    bounded_id("request id", &req.request_id)
}

/// What, if anything, ends a deploy topic, judged from the replicated state. Covers
/// watchers that join after the events were published (or after a leader change).
fn terminal_from_state(s: &State, topic: &Topic, config: &crate::config::SchedulerConfig) -> Option<Event> {
    let (app, number) = match topic {
        Topic::Build(id) => {
            let Some(b) = s.builds.get(id) else {
                return Some(Event::Failed(
                    s.missing_build_reason(id).unwrap_or_else(|| format!("build {id} no longer exists")),
                ));
            };
            match b.state {
                BuildState::Failed | BuildState::Cancelled => {
                    let reason = b.error.clone().unwrap_or_default();
                    return Some(Event::Failed(format!(
                        "build {id} {}: {reason}",
                        if b.state == BuildState::Failed { "failed" } else { "was cancelled" }
                    )));
                }
                BuildState::Pushed => (b.app.clone(), b.release?),
                _ => return None,
            }
        }
        Topic::Release { app, number } => (app.clone(), *number),
    };
    let Some(r) = s.release(&app, number) else {
        return Some(Event::Failed(format!(
            "release {number} of {app} no longer exists (the app was deleted)"
        )));
    };
    match r.deploy {
        DeployState::Pending => None,
        DeployState::Failed => Some(Event::Failed(format!(
            "deploy of release {number} failed: {}",
            r.deploy_error.clone().unwrap_or_default()
        ))),
        DeployState::Deployed => Some(Event::Done(pb::DeployDone {
            release: Some(convert::release(r)),
            service: format!("{}_{app}", config.deploy.stack),
            running: r.effective_replicas(),
            published_port: r.run.publish.map(u32::from).unwrap_or_default(),
            urls: crate::router::routes::app_urls(s, &app, &config.router.domain, config.router.http_port),
        })),
    }
}

pub(super) enum Topic {
    Build(String),
    Release { app: String, number: u64 },
}

/// Streams a deploy topic: history, then live events, until a terminal event.
pub(super) fn watch_deploy(
    ctx: Arc<Context>,
    first: Option<Event>,
    topic_name: String,
    topic: Topic,
) -> EventStream {
    Box::pin(async_stream::stream! {
        if let Some(first) = first {
            yield Ok(DeployEvent { event: Some(first) });
        }
        let sub = ctx.events.subscribe(&topic_name);
        let mut live = sub.live;
        for event in sub.history {
            let terminal = is_terminal(&event);
            yield Ok(event);
            if terminal {
                return;
            }
        }
        loop {
            // The replicated state may already say how it ended (a watcher that joined
            // late, a leader change): then give the live feed only a moment to deliver
            // its own terminal event before answering from the state.
            let done = ctx.store.read(|s| terminal_from_state(s, &topic, &ctx.config));
            let wait = if done.is_some() { Duration::from_millis(200) } else { Duration::from_secs(2) };
            match tokio::time::timeout(wait, live.recv()).await {
                Ok(Ok(event)) => {
                    let terminal = is_terminal(&event);
                    yield Ok(event);
                    if terminal { return; }
                }
                Ok(Err(RecvError::Lagged(n))) => {
                    yield Ok(DeployEvent { event: Some(Event::DeployProgress(format!("({n} log lines skipped: the client is slower than the build)"))) });
                }
                Ok(Err(RecvError::Closed)) | Err(_) if done.is_some() => {
                    yield Ok(DeployEvent { event: done });
                    return;
                }
                // A closed feed answers at once: poll the state at the feed's pace.
                Ok(Err(RecvError::Closed)) => tokio::time::sleep(wait).await,
                Err(_) => {}
            }
        }
    })
}

#[tonic::async_trait]
impl pb::control_server::Control for ControlService {
    async fn create_app(&self, req: Request<pb::CreateAppRequest>) -> Result<Response<pb::App>, Status> {
        let req = req.into_inner();
        check_create_app(&req)?;
        let branch = if req.branch.is_empty() { "main".to_string() } else { req.branch };
        // The router serves the app at <app>.<domain>: no other app may hold that name.
        let host = crate::router::routes::app_host(&req.name, &self.ctx.config.router.domain);
        let holder = self.ctx.store.read_current(|s| s.claims(None).hosts.get(&host).cloned()).await?;
        if let Some(holder) = holder {
            return Err(Status::already_exists(format!(
                "the router would serve app {:?} at {host:?}, which app {holder:?} holds in its run.domains; \
                 pick another app name, or remove {host:?} from {holder}'s slipway.toml and deploy {holder}",
                req.name
            )));
        }
        let cmd =
            Command::CreateApp { name: req.name, repo: req.repo, branch, at_ms: slipway_common::now_ms() };
        match self.ctx.store.write(cmd).await? {
            Applied::App(app) => {
                Ok(Response::new(convert::app(&app, &self.ctx.config.deploy.stack, Vec::new())))
            }
            other => Err(Status::internal(format!("unexpected answer {other:?}"))),
        }
    }

    async fn list_apps(
        &self,
        _: Request<pb::ListAppsRequest>,
    ) -> Result<Response<pb::ListAppsResponse>, Status> {
        let (stack, router) = (&self.ctx.config.deploy.stack, &self.ctx.config.router);
        let urls = |s: &crate::state::State, app: &str| {
            crate::router::routes::app_urls(s, app, &router.domain, router.http_port)
        };
        let apps = self
            .ctx
            .store
            .read_current(|s| s.apps.values().map(|a| convert::app(a, stack, urls(s, &a.name))).collect())
            .await?;
        Ok(Response::new(pb::ListAppsResponse { apps }))
    }

    async fn get_app(&self, req: Request<pb::GetAppRequest>) -> Result<Response<pb::App>, Status> {
        let name = req.into_inner().name;
        validate::app_name(&name).map_err(Error::from)?;
        let (stack, router) = (&self.ctx.config.deploy.stack, &self.ctx.config.router);
        let app = self
            .ctx
            .store
            .read_current(|s| {
                let urls = crate::router::routes::app_urls(s, &name, &router.domain, router.http_port);
                s.app(&name).map(|a| convert::app(a, stack, urls))
            })
            .await?
            .map_err(Error::from)?;
        Ok(Response::new(app))
    }

    async fn delete_app(
        &self,
        req: Request<pb::DeleteAppRequest>,
    ) -> Result<Response<pb::DeleteAppResponse>, Status> {
        let name = req.into_inner().name;
        validate::app_name(&name).map_err(Error::from)?;
        // Fenced: a quorum confirms this member leads before it removes a service.
        self.ctx.store.confirm_leading().await?;
        // Refuse before touching Swarm, so a refused delete changes nothing.
        self.ctx
            .store
            .read(|s| {
                s.check_deletable(&name)?;
                if self.ctx.dispatch.is_deploying(&name) {
                    return Err(crate::state::ApplyError::AppBusy {
                        app: name.clone(),
                        build: "a deploy (or a renewal of its registry grant) is in flight".into(),
                    });
                }
                Ok(())
            })
            .map_err(Error::from)?;
        let docker = self.ctx.docker().await?;
        crate::deploy::remove_app(&docker, &self.ctx.config.deploy.stack, &name)
            .await
            .map_err(|e| Error::Unavailable(format!("cannot remove the service of {name}: {e}")))?;
        // Its Swarm secrets go too (best effort: one Swarm still holds for the service's
        // last tasks stays; `docker secret ls --filter label=io.slipway.app=<app>` shows it).
        let stack = &self.ctx.config.deploy.stack;
        if let Err(err) = crate::deploy::secrets::prune(&docker, stack, &name, &Default::default()).await {
            tracing::warn!(app = %name, %err, "cannot remove the app's Swarm secrets");
        }
        self.ctx.store.write(Command::DeleteApp { name }).await?;
        Ok(Response::new(pb::DeleteAppResponse {}))
    }

    type DeployStream = EventStream;

    async fn deploy(&self, req: Request<pb::DeployRequest>) -> Result<Response<EventStream>, Status> {
        let req = req.into_inner();
        check_deploy(&req)?;
        let branch = self
            .ctx
            .store
            .read_current(|s| s.app(&req.app).map(|a| a.branch.clone()))
            .await?
            .map_err(Error::from)?;
        let git_ref = if req.git_ref.is_empty() { branch } else { req.git_ref };
        validate::git_ref(&git_ref).map_err(Error::from)?;
        // Fail fast, before a build is spent, if the Swarm manager cannot be reached.
        self.ctx.docker().await?;
        let request_id =
            if req.request_id.is_empty() { uuid::Uuid::new_v4().to_string() } else { req.request_id };
        let cmd = Command::QueueBuild {
            app: req.app,
            git_ref,
            no_cache: req.no_cache,
            request_id: Some(request_id),
            at_ms: slipway_common::now_ms(),
        };
        let build = match self.ctx.store.write(cmd).await? {
            Applied::Build(b) => b,
            other => return Err(Status::internal(format!("unexpected answer {other:?}"))),
        };
        tracing::info!(build = %build.id, app = %build.app, git_ref = %build.git_ref, "build queued");
        self.ctx.dispatcher_wake();
        let first = Event::BuildQueued(build.id.clone());
        Ok(Response::new(watch_deploy(
            self.ctx.clone(),
            Some(first),
            build.id.clone(),
            Topic::Build(build.id),
        )))
    }

    async fn list_builds(
        &self,
        req: Request<pb::ListBuildsRequest>,
    ) -> Result<Response<pb::ListBuildsResponse>, Status> {
        let app = req.into_inner().app;
        if !app.is_empty() {
            validate::app_name(&app).map_err(Error::from)?;
        }
        let mut builds: Vec<pb::Build> = self
            .ctx
            .store
            .read_current(|s| {
                if !app.is_empty() {
                    s.app(&app)?;
                }
                Ok::<_, crate::state::ApplyError>(
                    s.builds
                        .values()
                        .filter(|b| app.is_empty() || b.app == app)
                        .map(|b| convert::build(b, convert::rejections(&self.ctx.dispatch.waiting_on(&b.id))))
                        .map(|mut b| {
                            // Per-step records are for `builds show`: a list stays small.
                            if let Some(o) = &mut b.output {
                                o.build_steps.clear();
                            }
                            b
                        })
                        .collect(),
                )
            })
            .await?
            .map_err(Error::from)?;
        builds.sort_by_key(|b| crate::state::build_seq(&b.id));
        Ok(Response::new(pb::ListBuildsResponse { builds }))
    }

    async fn get_build(&self, req: Request<pb::GetBuildRequest>) -> Result<Response<pb::Build>, Status> {
        let id = req.into_inner().id;
        bounded_id("build id", &id)?;
        let waiting = convert::rejections(&self.ctx.dispatch.waiting_on(&id));
        let build = self
            .ctx
            .store
            .read_current(|s| {
                s.builds
                    .get(&id)
                    .map(|b| {
                        let mut out = convert::build(b, waiting);
                        out.cache_doctor =
                            crate::state::cache_doctor::for_build(s, b).map(|d| convert::cache_doctor(&d));
                        out
                    })
                    .ok_or_else(|| missing_build(s, &id))
            })
            .await??;
        Ok(Response::new(build))
    }

    type BuildLogsStream = LogStream;

    async fn build_logs(&self, req: Request<pb::BuildLogsRequest>) -> Result<Response<LogStream>, Status> {
        let req = req.into_inner();
        let id = req.build_id;
        bounded_id("build id", &id)?;
        let state = self
            .ctx
            .store
            .read(|s| s.builds.get(&id).map(|b| b.state).ok_or_else(|| missing_build(s, &id)))?;
        let ctx = self.ctx.clone();
        if ctx.events.has_topic(&id) {
            let sub = ctx.events.subscribe(&id);
            let follow = req.follow && !state.is_terminal();
            let stream = async_stream::stream! {
                let mut live = sub.live;
                let mut ended = sub.finished;
                for event in sub.history {
                    match event.event {
                        Some(Event::Log(line)) => yield Ok(line),
                        Some(Event::Done(_) | Event::Failed(_)) => ended = true,
                        _ => {}
                    }
                }
                if !follow || ended {
                    return;
                }
                loop {
                    match tokio::time::timeout(Duration::from_secs(2), live.recv()).await {
                        Ok(Ok(DeployEvent { event: Some(Event::Log(line)) })) => yield Ok(line),
                        Ok(Ok(DeployEvent { event: Some(Event::Done(_) | Event::Failed(_) | Event::Release(_)) })) => return,
                        Ok(Ok(_)) | Ok(Err(RecvError::Lagged(_))) => {}
                        Ok(Err(RecvError::Closed)) => return,
                        Err(_) => {
                            if ctx.store.read(|s| s.builds.get(&id).is_none_or(|b| b.state.is_terminal())) {
                                return;
                            }
                        }
                    }
                }
            };
            return Ok(Response::new(Box::pin(stream)));
        }
        let path = ctx.events.log_path(&id);
        let text = tokio::fs::read_to_string(&path).await.map_err(|_| {
            Error::NotFound(format!(
                "no log for build {id} on this scheduler (logs stay with the scheduler that led during the build, and on the build node under its build_root/logs)"
            ))
        })?;
        let lines: Vec<Result<pb::LogLine, Status>> =
            text.lines().map(|l| Ok(pb::LogLine { at_ms: 0, line: l.to_string() })).collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(lines))))
    }

    async fn list_releases(
        &self,
        req: Request<pb::ListReleasesRequest>,
    ) -> Result<Response<pb::ListReleasesResponse>, Status> {
        super::releases::list_releases(&self.ctx, req.into_inner().app).await.map(Response::new)
    }

    type RollbackStream = EventStream;

    async fn rollback(&self, req: Request<pb::RollbackRequest>) -> Result<Response<EventStream>, Status> {
        super::releases::rollback(&self.ctx, req.into_inner()).await.map(Response::new)
    }

    async fn gc(&self, req: Request<pb::GcRequest>) -> Result<Response<pb::GcResponse>, Status> {
        super::releases::gc(&self.ctx, req.into_inner().dry_run).await.map(Response::new)
    }

    async fn list_nodes(
        &self,
        _: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        let nodes = self.ctx.store.read(|s| s.nodes.values().map(|n| self.node(n)).collect());
        Ok(Response::new(pb::ListNodesResponse { nodes }))
    }

    async fn join_token(
        &self,
        req: Request<pb::JoinTokenRequest>,
    ) -> Result<Response<pb::JoinTokenResponse>, Status> {
        let req = req.into_inner();
        let role = join_tokens::token_role(&req.role)?;
        let ca = super::enroll::ca(&self.ctx)?;
        let token = join_tokens::join_token(&self.ctx.store, ca, role, req.rotate).await?;
        Ok(Response::new(pb::JoinTokenResponse { token: token.to_string() }))
    }

    async fn issue_admin_cert(
        &self,
        req: Request<pb::IssueAdminCertRequest>,
    ) -> Result<Response<pb::Certified>, Status> {
        let req = req.into_inner();
        super::enroll::issue_admin_cert(&self.ctx, &req.name, &req.csr_pem).map(Response::new)
    }

    async fn revoke_admin(
        &self,
        req: Request<pb::RevokeAdminRequest>,
    ) -> Result<Response<pb::RevokeAdminResponse>, Status> {
        let caller = super::enroll::caller(&req);
        let name = req.into_inner().name;
        super::enroll::check_name(Role::Admin, &name)?;
        if let slipway_proto::tls::Caller::Verified(who) = &caller {
            if who.role == Role::Admin && who.name == name {
                return Err(Status::failed_precondition(format!(
                    "this would deny the certificate making the call ({who}); revoke {name:?} with another \
                     operator's certificate (`slipway cluster admin-cert OTHER`)"
                )));
            }
        }
        let at_ms = slipway_common::now_ms();
        let revoke = Command::RevokeCertificates {
            role: Role::Admin.to_string(),
            name: name.clone(),
            reason: format!("the operator certificates of {name:?} were revoked"),
            at_ms,
            certs_expire_by_ms: certs_expire_by_ms(&self.ctx, Role::Admin, at_ms),
        };
        self.ctx.store.write(revoke).await?;
        tracing::info!(operator = %name, "operator certificates revoked");
        Ok(Response::new(pb::RevokeAdminResponse {}))
    }

    async fn set_node_drain(
        &self,
        req: Request<pb::SetNodeDrainRequest>,
    ) -> Result<Response<pb::Node>, Status> {
        let req = req.into_inner();
        let node_id = self.resolve_node(&req.node)?;
        let node = match self.ctx.store.write(Command::SetDrain { node_id, draining: req.draining }).await? {
            Applied::Node(n) => n,
            other => return Err(Status::internal(format!("unexpected answer {other:?}"))),
        };
        tracing::info!(node = %node.name, draining = node.draining, "node drain changed");
        self.ctx.dispatcher_wake();
        Ok(Response::new(self.node(&node)))
    }

    async fn remove_node(
        &self,
        req: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::RemoveNodeResponse>, Status> {
        let req = req.into_inner();
        let node_id = self.resolve_node(&req.node)?;
        let at_ms = slipway_common::now_ms();
        let cmd = Command::RemoveNode {
            node_id,
            at_ms,
            certs_expire_by_ms: certs_expire_by_ms(&self.ctx, Role::Agent, at_ms),
        };
        let (node, requeued) = match self.ctx.store.write(cmd).await? {
            Applied::NodeRemoved { node, requeued } => (node, requeued),
            other => return Err(Status::internal(format!("unexpected answer {other:?}"))),
        };
        tracing::info!(
            node = %node.name,
            node_id = %node.id,
            ?requeued,
            "node removed from the fleet; its certificates are denied"
        );
        self.ctx.dispatcher_wake();
        Ok(Response::new(pb::RemoveNodeResponse { node: Some(self.node(&node)), requeued_builds: requeued }))
    }

    async fn cluster_status(
        &self,
        _: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        Ok(Response::new(super::cluster::cluster_status(&self.ctx)))
    }

    async fn add_member(
        &self,
        request: Request<pb::AddMemberRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        let req = request.into_inner();
        bounded_id("member address", &req.addr)?;
        let addr = req.addr.trim();
        if addr.is_empty() || addr.contains('/') || !addr.contains(':') {
            return Err(Status::invalid_argument(format!(
                "addr {addr:?} must be the joining scheduler's advertised host:port"
            )));
        }
        self.ctx.store.require_leader()?;
        let id = super::cluster::probe_joiner(&self.ctx, addr, req.node_id).await?;
        let catch_up = Duration::from_secs(self.ctx.config.raft.join_catch_up_secs);
        raft::add_member(self.ctx.store.raft(), id, addr, catch_up)
            .await
            .map_err(super::cluster::membership_status)?;
        Ok(Response::new(super::cluster::cluster_status(&self.ctx)))
    }

    async fn remove_member(
        &self,
        request: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        let id = request.into_inner().node_id;
        self.ctx.store.require_leader()?;
        let (me, member) = {
            let metrics = self.ctx.store.raft().metrics();
            let m = metrics.borrow();
            (m.id, m.membership_config.membership().get_node(&id).is_some())
        };
        if !member {
            return Err(super::cluster::membership_status(raft::MembershipError::NotFound(id)));
        }
        // Its certificates are denied first, so a retry after a failure half-way still
        // denies them (removing a member that is gone is "not found"). Not so for this
        // leader itself: the others would refuse the entries that remove it.
        if id != me {
            self.revoke_member(id).await?;
        }
        raft::remove_member(self.ctx.store.raft(), id).await.map_err(super::cluster::membership_status)?;
        if id == me {
            self.revoke_member(id).await?;
        }
        tracing::info!(id, "scheduler removed; its certificates are denied");
        Ok(Response::new(super::cluster::cluster_status(&self.ctx)))
    }

    async fn app_status(
        &self,
        req: Request<pb::AppStatusRequest>,
    ) -> Result<Response<pb::AppStatusResponse>, Status> {
        Ok(Response::new(super::app_status::app_status(&self.ctx, req.into_inner()).await?))
    }

    type AppLogsStream = super::app_status::AppLogStream;

    async fn app_logs(
        &self,
        req: Request<pb::AppLogsRequest>,
    ) -> Result<Response<Self::AppLogsStream>, Status> {
        Ok(Response::new(super::app_status::app_logs(self.ctx.clone(), req.into_inner()).await?))
    }

    async fn get_config(
        &self,
        req: Request<pb::GetConfigRequest>,
    ) -> Result<Response<pb::AppConfig>, Status> {
        super::app_config::get_config(&self.ctx, &req.into_inner().app).await.map(Response::new)
    }

    type SetConfigStream = EventStream;

    async fn set_config(&self, req: Request<pb::SetConfigRequest>) -> Result<Response<EventStream>, Status> {
        super::app_config::set_config(&self.ctx, req.into_inner()).await.map(Response::new)
    }

    type ScaleStream = EventStream;

    async fn scale(&self, req: Request<pb::ScaleRequest>) -> Result<Response<EventStream>, Status> {
        super::app_config::scale(&self.ctx, req.into_inner()).await.map(Response::new)
    }

    type SetSecretStream = EventStream;

    async fn set_secret(&self, req: Request<pb::SetSecretRequest>) -> Result<Response<EventStream>, Status> {
        super::secrets::set_secret(&self.ctx, req.into_inner()).await.map(Response::new)
    }

    async fn list_secrets(
        &self,
        req: Request<pb::ListSecretsRequest>,
    ) -> Result<Response<pb::ListSecretsResponse>, Status> {
        Ok(Response::new(super::secrets::list_secrets(&self.ctx, &req.into_inner().app).await?))
    }

    type UnsetSecretStream = EventStream;

    async fn unset_secret(
        &self,
        req: Request<pb::UnsetSecretRequest>,
    ) -> Result<Response<EventStream>, Status> {
        super::secrets::unset_secret(&self.ctx, req.into_inner()).await.map(Response::new)
    }

    async fn app_webhook(
        &self,
        req: Request<pb::AppWebhookRequest>,
    ) -> Result<Response<pb::AppWebhookResponse>, Status> {
        super::app_webhook::app_webhook(&self.ctx, req.into_inner()).await.map(Response::new)
    }
}

impl ControlService {
    /// Puts scheduler `id`'s certificates on the deny list: its raft RPCs and forwarded
    /// writes are refused from then on.
    async fn revoke_member(&self, id: u64) -> Result<(), Status> {
        let at_ms = slipway_common::now_ms();
        let revoke = Command::RevokeCertificates {
            role: Role::Scheduler.to_string(),
            name: id.to_string(),
            reason: format!("scheduler {id} was removed from the cluster"),
            at_ms,
            certs_expire_by_ms: certs_expire_by_ms(&self.ctx, Role::Scheduler, at_ms),
        };
        self.ctx.store.write(revoke).await.map(|_| ()).map_err(|e| {
            Status::unavailable(format!(
                "cannot deny the certificates of scheduler {id} ({e}); run `slipway cluster remove {id}` again"
            ))
        })
    }

    /// The id of the node named or with the id `node`, or why not.
    fn resolve_node(&self, node: &str) -> Result<String, Status> {
        bounded_id("node", node)?;
        let ids = self.ctx.store.read(|s| {
            let by_id = s.nodes.get(node).map(|n| vec![n.id.clone()]);
            by_id.unwrap_or_else(|| {
                s.nodes.values().filter(|n| n.name == node).map(|n| n.id.clone()).collect()
            })
        });
        match &ids[..] {
            [id] => Ok(id.clone()),
            [] => Err(Error::NotFound(format!(
                "no node is named or has the id {node:?}; `slipway nodes` lists them (`--json` with their ids)"
            ))
            .into()),
            _ => Err(Status::invalid_argument(format!(
                "several nodes are named {node:?}; give the node's id (`slipway nodes --json`)"
            ))),
        }
    }

    /// A node as the API shows it: the replicated record with the leader's soft state.
    fn node(&self, n: &crate::state::NodeRecord) -> pb::Node {
        let down_after = self.ctx.config.down_after();
        let leading = self.ctx.fleet.is_leading();

        let soft = self.ctx.fleet.soft_state(&n.id, down_after);
        let liveness = if leading { soft.liveness } else { Liveness::Unknown };
        pb::Node {
            id: n.id.clone(),
            name: n.name.clone(),
            status: match liveness {
                Liveness::Ready => pb::NodeStatus::Ready,
                Liveness::Down => pb::NodeStatus::Down,
                Liveness::Unknown => pb::NodeStatus::Unknown,
            } as i32,
            draining: n.draining,
            registered_at_ms: n.registered_at_ms,
            report: soft.report,
            last_report_age_ms: soft.last_report_age.map_or(0, |a| a.as_millis() as u64),
            labels: n.labels.clone().into_iter().collect(),
        }
    }
}

/// When every certificate of `role` issued up to `at_ms` has expired (ms since the
/// epoch): how long a deny list entry must stay. A minute more for clocks a little apart.
fn certs_expire_by_ms(ctx: &Context, role: Role, at_ms: u64) -> u64 {
    let lifetime = super::enroll::validity(ctx, role) + Duration::from_secs(60);
    at_ms.saturating_add(u64::try_from(lifetime.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use slipway_proto::agent_message::Msg as AgentMsg;
    use slipway_proto::agent_service_client::AgentServiceClient;
    use slipway_proto::control_client::ControlClient;
    use tonic::Code;

    use super::*;
    use crate::config::SchedulerConfig;

    fn create(name: &str, repo: &str, branch: &str) -> pb::CreateAppRequest {
        pb::CreateAppRequest { name: name.into(), repo: repo.into(), branch: branch.into() }
    }

    #[test]
    fn every_field_of_a_create_or_deploy_is_checked_naming_it() {
        assert!(check_create_app(&create("shop", "https://h/shop.git", "")).is_ok());
        for (req, why) in [
            (create("Shop", "https://h/a", ""), "invalid app name: \"Shop\" must start with a lowercase"),
            (create(&"a".repeat(5000), "https://h/a", ""), "invalid app name: it is 5000 bytes long"),
            (create("shop", "ext::sh%20-c%20x", ""), "invalid repository URL: \"ext::sh%20-c%20x\" names"),
            (create("shop", &"h:".repeat(5000), ""), "invalid repository URL: it is 10000 bytes long"),
            (create("shop", "https://h/a", "-x"), "invalid git ref: \"-x\" starts with '-'"),
            (create("shop", "https://h/a", "a..b"), "invalid git ref: \"a..b\" contains '..'"),
        ] {
            let status = Status::from(check_create_app(&req).unwrap_err());
            assert_eq!(status.code(), Code::InvalidArgument);
            assert!(status.message().starts_with(why), "{why}: {}", status.message());
        }
        let deploy = |app: &str, git_ref: &str, request_id: &str| pb::DeployRequest {
            app: app.into(),
            git_ref: git_ref.into(),
            request_id: request_id.into(),
            ..Default::default()
        };
        assert!(check_deploy(&deploy("shop", "", "")).is_ok());
        for (req, why) in [
            (deploy("sh op", "", ""), "invalid app name"),
            (deploy("shop", "x.lock/y", ""), "invalid git ref"),
            (
                deploy("shop", "", &"r".repeat(256)),
                "invalid request id: it is 256 bytes long; the limit is 255",
            ),
        ] {
            let message = check_deploy(&req).unwrap_err().to_string();
            assert!(message.starts_with(why), "{why}: {message}");
        }
    }

    async fn single_scheduler(dir: &std::path::Path) -> crate::server::Running {
        let config = SchedulerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            http_listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.join("data"),
            // Plain text: this test is about request checks, not who may call.
            tls: crate::config::TlsSettings { insecure: true, ..Default::default() },
            ..Default::default()
        };
        let running = crate::server::start(config).await.expect("scheduler starts");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !(running.context.store.is_leader() && running.context.fleet.is_leading()) {
            assert!(std::time::Instant::now() < deadline, "no leader within 20 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        running
    }

    fn last_log_index(ctx: &Context) -> u64 {
        ctx.store.raft().metrics().borrow().last_log_index.unwrap_or_default()
    }

    /// Hostile requests over the wire: refused with the field named, oversized ones not
    /// even decoded, and none of them leaves a trace in the raft log.
    #[tokio::test]
    async fn hostile_requests_are_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let running = single_scheduler(dir.path()).await;
        let url = format!("http://{}", running.grpc_addr);
        let mut control = ControlClient::connect(url.clone()).await.unwrap();
        control.create_app(create("shop", "https://example.com/shop.git", "")).await.expect("a good app");
        let before = last_log_index(&running.context);

        for (req, why) in [
            (create("Bad_Name", "https://h/a", ""), "invalid app name"),
            (create("evil", "-uevil", ""), "invalid repository URL"),
            (create("evil", "fd::3", ""), "names the git transport \"fd\""),
            (create("evil", "https://h/a", "--upload-pack=x"), "starts with '-'"),
        ] {
            let status = control.create_app(req).await.unwrap_err();
            assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
            assert!(status.message().contains(why), "{why}: {}", status.message());
        }
        let status = control
            .deploy(pb::DeployRequest {
                app: "shop".into(),
                request_id: "r".repeat(300),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("request id: it is 300 bytes long"), "{}", status.message());
        let status = control.get_build(pb::GetBuildRequest { id: "b".repeat(100_000) }).await.unwrap_err();
        assert!(status.message().starts_with("invalid build id: it is 100000 bytes"), "{}", status.message());

        // Larger than the control API decodes: refused by the transport.
        let huge = format!("https://example.com/{}", "a".repeat(2 * 1024 * 1024));
        let status = control.create_app(create("huge", &huge, "")).await.unwrap_err();
        assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
        assert!(status.message().contains("the limit is: 1048576 bytes"), "{}", status.message());

        // An agent's Hello too large, or with a name raft should not hold.
        let mut agents = AgentServiceClient::connect(url).await.unwrap();
        let hello = |name: String, labels: HashMap<String, String>| {
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            let hello = pb::Hello { node_id: "n1".into(), name, labels, ..Default::default() };
            tx.try_send(pb::AgentMessage { msg: Some(AgentMsg::Hello(hello)) }).unwrap();
            (tx, tokio_stream::wrappers::ReceiverStream::new(rx))
        };
        let (_tx, stream) = hello("x".repeat(5 * 1024 * 1024), HashMap::new());
        let status = agents.session(stream).await.unwrap_err();
        assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
        let (_tx, stream) = hello("n".repeat(1000), HashMap::new());
        let status = agents.session(stream).await.unwrap_err();
        assert!(status.message().starts_with("Hello.name must be at most 255 bytes"), "{}", status.message());
        let labels = (0..100).map(|i| (format!("k{i}"), "v".to_string())).collect();
        let (_tx, stream) = hello("node".into(), labels);
        let status = agents.session(stream).await.unwrap_err();
        assert!(status.message().contains("the limit is 64"), "{}", status.message());

        assert_eq!(last_log_index(&running.context), before, "nothing reached the raft log");
        running.stop(Duration::from_secs(5)).await;
    }
}

//! [`FakeAgent`]: a test client that speaks the agent session protocol with a real
//! scheduler over mutual TLS, holding a valid agent certificate from the cluster CA, and
//! says whatever the test wants, as a compromised node would. It reports a healthy idle
//! node every second (so placement picks it), hands the test each assignment it gets,
//! and reports the results the test makes up.

use std::sync::Arc;
use std::time::Duration;

use slipway_proto::agent_message::Msg;
use slipway_proto::agent_service_client::AgentServiceClient;
use slipway_proto::build_event::Event as BuildEv;
use slipway_proto::scheduler_message::Msg as SchedMsg;
use slipway_proto::tls::{PeerIdentity, Role, Transport};
use slipway_proto::{self as pb};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::TestCluster;

/// An agent session driven by the test (module docs).
pub struct FakeAgent {
    /// The node it speaks for (its certificate's name).
    pub name: String,
    outbound: mpsc::Sender<pb::AgentMessage>,
    inbound: tonic::Streaming<pb::SchedulerMessage>,
    reporter: tokio::task::JoinHandle<()>,
}

/// A healthy, idle node with room for builds.
fn idle_report() -> pb::NodeReport {
    pb::NodeReport {
        build_fs_total_bytes: 100 << 30,
        build_fs_available_bytes: 90 << 30,
        cpu_count: 4,
        memory_total_bytes: 8 << 30,
        memory_available_bytes: 6 << 30,
        build_slots: 2,
        docker_healthy: true,
        docker_version: "20.10".into(),
        agent_version: "fake".into(),
        sent_at_ms: slipway_common::now_ms(),
        ..Default::default()
    }
}

impl TestCluster {
    /// A [`FakeAgent`] for node `name`, its certificate issued by the cluster CA,
    /// connected to member 1; it has said Hello and the scheduler has welcomed it.
    pub async fn fake_agent(&self, name: &str) -> FakeAgent {
        let creds = self
            .ca()
            .issue(&PeerIdentity::new(Role::Agent, name), Duration::from_secs(3600))
            .expect("the cluster CA issues an agent certificate");
        let endpoint = Transport::Tls(Arc::new(creds)).endpoint(&self.grpc_addr(1)).expect("an endpoint");
        let channel = endpoint.connect().await.expect("the fake agent connects over mutual TLS");
        let (outbound, rx) = mpsc::channel(64);
        let hello = pb::Hello {
            node_id: name.into(),
            name: name.into(),
            agent_version: "fake".into(),
            report: Some(idle_report()),
            ..Default::default()
        };
        outbound.send(pb::AgentMessage { msg: Some(Msg::Hello(hello)) }).await.unwrap();
        let mut inbound = AgentServiceClient::new(channel)
            .session(ReceiverStream::new(rx))
            .await
            .expect("the scheduler opens the fake agent's session")
            .into_inner();
        match inbound.message().await {
            Ok(Some(pb::SchedulerMessage { msg: Some(SchedMsg::Welcome(_)) })) => {}
            other => panic!("the fake agent expected Welcome, got {other:?}"),
        }
        let reports = outbound.clone();
        let reporter = tokio::spawn(async move {
            loop {
                let report = pb::AgentMessage { msg: Some(Msg::Report(idle_report())) };
                if reports.send(report).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        FakeAgent { name: name.into(), outbound, inbound, reporter }
    }
}

impl FakeAgent {
    /// The next build assignment (other messages are skipped); panics after `timeout`.
    pub async fn next_assignment(&mut self, timeout: Duration) -> pb::BuildAssignment {
        let wait = async {
            loop {
                match self.inbound.message().await {
                    Ok(Some(pb::SchedulerMessage { msg: Some(SchedMsg::Assign(a)) })) => return a,
                    Ok(Some(_)) => {}
                    other => panic!("the fake agent's session ended: {other:?}"),
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .unwrap_or_else(|_| panic!("node {} got no assignment within {timeout:?}", self.name))
    }

    /// Reports that `assignment`'s attempt started, then succeeded with `output`.
    pub async fn succeed(&self, assignment: &pb::BuildAssignment, output: pb::BuildOutput) {
        self.event(assignment, BuildEv::Started(pb::BuildStarted::default())).await;
        self.event(assignment, BuildEv::Succeeded(output)).await;
    }

    async fn event(&self, a: &pb::BuildAssignment, event: BuildEv) {
        let event = pb::BuildEvent { build_id: a.build_id.clone(), attempt: a.attempt, event: Some(event) };
        self.outbound.send(pb::AgentMessage { msg: Some(Msg::Build(event)) }).await.expect("session open");
    }
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        self.reporter.abort();
    }
}

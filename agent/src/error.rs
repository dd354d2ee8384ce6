//! Why a build failed, phase by phase. Every step of a build returns a [`Failure`]; the
//! session sends it to the scheduler as a
//! [`slipway_proto::BuildFailure`] whose `phase` is [`Failure::phase`] and whose `reason`
//! is written for the person who asked for the build (what failed and what to change).

/// A build that could not finish, with the phase it failed in.
///
/// The first five variants are the phases named in `agent.proto`; [`Failure::Setup`]
/// is the node's own fault (its build directory or log file), which tells the scheduler
/// that another node may well succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// The repository or ref was refused, unreachable or missing, or git failed.
    #[error("clone failed: {0}")]
    Clone(String),
    /// `slipway.toml` is missing, invalid, or names another app.
    #[error("bad manifest: {0}")]
    Manifest(String),
    /// The build context could not be assembled (escapes the clone, no Dockerfile, IO).
    #[error("build context: {0}")]
    Context(String),
    /// The Docker build failed: the failing step, its output and the daemon's message.
    #[error("build failed: {0}")]
    Build(String),
    /// The image could not be pushed to the registry.
    #[error("push failed: {0}")]
    Push(String),
    /// The node could not prepare the build (build directory, log file).
    #[error("node setup failed: {0}")]
    Setup(String),
}

impl Failure {
    /// The phase name reported to the scheduler: `clone`, `manifest`, `context`, `build`,
    /// `push` or `setup`.
    pub fn phase(&self) -> &'static str {
        match self {
            Failure::Clone(_) => "clone",
            Failure::Manifest(_) => "manifest",
            Failure::Context(_) => "context",
            Failure::Build(_) => "build",
            Failure::Push(_) => "push",
            Failure::Setup(_) => "setup",
        }
    }

    /// The explanation for a person, without the phase prefix.
    pub fn reason(&self) -> &str {
        match self {
            Failure::Clone(r)
            | Failure::Manifest(r)
            | Failure::Context(r)
            | Failure::Build(r)
            | Failure::Push(r)
            | Failure::Setup(r) => r,
        }
    }
}

impl From<Failure> for slipway_proto::BuildFailure {
    fn from(failure: Failure) -> Self {
        slipway_proto::BuildFailure {
            phase: failure.phase().to_string(),
            reason: failure.reason().to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_map_to_their_phase_on_the_wire() {
        let wire: slipway_proto::BuildFailure = Failure::Push("registry down".into()).into();
        assert_eq!(wire.phase, "push");
        assert_eq!(wire.reason, "registry down");
        assert_eq!(Failure::Build("x".into()).to_string(), "build failed: x");
    }
}

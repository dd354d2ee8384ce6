//! Tests of how engine errors are sorted for the caller, on hand-made bollard errors (no
//! engine is reached).

use super::*;

#[test]
fn engine_errors_are_sorted_for_the_caller() {
    let docker = &Docker::connect_with_http("http://127.0.0.1:1", 1, bollard::API_DEFAULT_VERSION).unwrap();
    let not_manager = BollardError::DockerResponseServerError {
        status_code: 503,
        message: "This node is not a swarm manager. Use \"docker swarm init\" or \"docker swarm join\" to connect this node to swarm and try again.".into(),
    };
    let err = engine_error(docker, "inspect the swarm", not_manager);
    assert!(matches!(err, DeployError::NotAManager(_)));
    assert!(err.to_string().contains("run `docker swarm init`"));

    let refused =
        BollardError::DockerResponseServerError { status_code: 400, message: "invalid mount".into() };
    let err = engine_error(docker, "create service s_a", refused);
    assert_eq!(err.to_string(), "Docker refused to create service s_a: invalid mount (HTTP 400)");

    let down = BollardError::IOError { err: std::io::Error::from(std::io::ErrorKind::ConnectionRefused) };
    let err = engine_error(docker, "inspect the swarm", down);
    assert!(matches!(err, DeployError::Engine { .. }));
    assert!(err.to_string().contains("check that dockerd is running"), "{err}");
}

#[test]
fn the_fence_refuses_only_an_update_below_the_release_the_service_runs() {
    use super::super::fence;
    // A first deploy, a service slipway did not label, or one with a label not its own.
    assert_eq!(fence(None, 1), Ok(()));
    assert_eq!(fence(Some("not-a-number"), 1), Ok(()));
    // The same release again (a retried deploy, a grant renewal) and newer ones pass.
    assert_eq!(fence(Some("7"), 7), Ok(()));
    assert_eq!(fence(Some("7"), 8), Ok(()));
    // An older one, from a deposed leader's stale state, is refused with what runs.
    assert_eq!(fence(Some("8"), 7), Err(8));
    assert_eq!(fence(Some("12"), 9), Err(12));
    let err = DeployError::Fenced { service: "s_shop".into(), running: 8, release: 7 };
    assert!(err.to_string().starts_with("service s_shop runs release 8, newer than release 7"), "{err}");
}

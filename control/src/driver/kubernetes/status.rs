//! Reading a compute pod's status: where a start stands, and why it failed, in the words of
//! the scheduler and the kubelet.

use k8s_openapi::api::core::v1::Pod;

use super::objects::CONTAINER;

/// Where a pod's start stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Scheduled or being scheduled, pulling, creating: wait for the next change.
    Pending,
    /// The container runs and the pod has an IP: probe the server's greeting there.
    Started { ip: String },
    /// The start cannot succeed without someone acting: the reason (`ErrImagePull`,
    /// `Unschedulable`, `CrashLoopBackOff`...) and the message that explains it.
    Failed {
        reason: String,
        message: String,
        /// The container ran at least once, so its log says why it stopped.
        has_logs: bool,
    },
    /// Being deleted (doze's own suspend, `kubectl delete`, an eviction).
    Terminating,
    /// The scheduler found no node for it, yet: a cluster autoscaler may add one, and a
    /// volume may still be being provisioned. Fatal only when it lasts.
    Unschedulable { message: String },
}

/// Whether an unschedulable pod waits for something that comes by itself (a volume being
/// provisioned or bound), rather than for room on a node.
pub fn waits_for_volume(message: &str) -> bool {
    message.contains("unbound immediate PersistentVolumeClaims")
        || message.contains("waiting for first consumer")
}

/// Waiting reasons of a container that mean the start will not succeed by waiting.
const FATAL_WAITING: &[&str] = &[
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
    "CrashLoopBackOff",
];

/// Classifies a pod.
pub fn progress(pod: &Pod) -> Progress {
    if pod.metadata.deletion_timestamp.is_some() {
        return Progress::Terminating;
    }
    let Some(status) = &pod.status else {
        return Progress::Pending;
    };
    let phase = status.phase.as_deref().unwrap_or("Pending");
    let container = status
        .container_statuses
        .as_ref()
        .and_then(|all| all.iter().find(|c| c.name == CONTAINER));
    // The API sends `lastState: {}` for a container that never ran: only a terminated one
    // left a log.
    let ran_before = container.is_some_and(|c| {
        c.restart_count > 0
            || c.last_state
                .as_ref()
                .is_some_and(|s| s.terminated.is_some())
    });
    if matches!(phase, "Failed" | "Succeeded") {
        return Progress::Failed {
            reason: status.reason.clone().unwrap_or_else(|| phase.to_owned()),
            message: status
                .message
                .clone()
                .unwrap_or_else(|| format!("the pod is {phase}")),
            has_logs: true,
        };
    }
    if let Some(waiting) = container
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.waiting.as_ref())
        && let Some(reason) = waiting.reason.as_deref()
        && FATAL_WAITING.contains(&reason)
    {
        // How the last run ended (OOMKilled, exit code 137...) says more than the back-off.
        let ended = container
            .and_then(|c| c.last_state.as_ref())
            .and_then(|s| s.terminated.as_ref())
            .map(|t| {
                format!(
                    " (last run: {}, exit code {})",
                    t.reason.as_deref().unwrap_or("terminated"),
                    t.exit_code
                )
            })
            .unwrap_or_default();
        return Progress::Failed {
            reason: reason.to_owned(),
            message: format!("{}{ended}", waiting.message.clone().unwrap_or_default()),
            has_logs: ran_before,
        };
    }
    if let Some(unschedulable) = status.conditions.iter().flatten().find(|c| {
        c.type_ == "PodScheduled"
            && c.status == "False"
            && c.reason.as_deref() == Some("Unschedulable")
    }) {
        return Progress::Failed {
            reason: "Unschedulable".to_owned(),
            message: unschedulable.message.clone().unwrap_or_default(),
            has_logs: false,
        };
    }
    let started = container.is_some_and(|c| {
        c.started == Some(true) && c.state.as_ref().is_some_and(|s| s.running.is_some())
    });
    match status.pod_ip.as_deref() {
        Some(ip) if phase == "Running" && started && !ip.is_empty() => {
            Progress::Started { ip: ip.to_owned() }
        }
        _ => Progress::Pending,
    }
}

/// Where a starting pod is, in a few words for the log: its phase, whether it is scheduled,
/// and the container's waiting reason (`ContainerCreating`, `PodInitializing`...).
pub fn step(pod: &Pod) -> String {
    let Some(status) = &pod.status else {
        return "accepted".to_owned();
    };
    let phase = status.phase.as_deref().unwrap_or("Pending");
    let scheduled = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "PodScheduled" && c.status == "True");
    let waiting = status
        .container_statuses
        .iter()
        .flatten()
        .find(|c| c.name == CONTAINER)
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.waiting.as_ref())
        .and_then(|w| w.reason.as_deref());
    match (phase, scheduled, waiting) {
        (_, _, Some(reason)) => format!("{phase}: {reason}"),
        ("Pending", false, None) => "Pending: scheduling".to_owned(),
        ("Pending", true, None) => match node_of(pod) {
            Some(node) => format!("Pending: scheduled on {node}"),
            None => "Pending: scheduled".to_owned(),
        },
        (phase, _, None) => phase.to_owned(),
    }
}

/// Whether the pod's server process ever ran (so a delete should give it its grace period).
pub fn ever_ran(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|all| all.iter().find(|c| c.name == CONTAINER))
        .is_some_and(|c| {
            c.started == Some(true)
                || c.restart_count > 0
                || c.state
                    .as_ref()
                    .is_some_and(|s| s.running.is_some() || s.terminated.is_some())
                || c.last_state
                    .as_ref()
                    .is_some_and(|s| s.terminated.is_some())
        })
}

/// The node a pod runs (or was placed) on.
pub fn node_of(pod: &Pod) -> Option<&str> {
    pod.spec.as_ref().and_then(|s| s.node_name.as_deref())
}

/// A pod that still counts as the compute: not being deleted, not finished.
pub fn is_live(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && !matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Failed" | "Succeeded")
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "status": status})).expect("pod")
    }

    #[test]
    fn classifies_the_kubelets_and_schedulers_words() {
        assert_eq!(
            progress(&pod(json!({"phase": "Pending"}))),
            Progress::Pending
        );
        let running = pod(
            json!({"phase": "Running", "podIP": "10.0.0.7", "containerStatuses": [
            {"name": "mariadb", "image": "m", "imageID": "", "ready": false, "restartCount": 0,
             "started": true, "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}]}),
        );
        assert_eq!(
            progress(&running),
            Progress::Started {
                ip: "10.0.0.7".into()
            }
        );
        let pull = pod(json!({"phase": "Pending", "containerStatuses": [
            {"name": "mariadb", "image": "m", "imageID": "", "ready": false, "restartCount": 0,
             "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image \"x\""}}}]}));
        assert!(
            matches!(progress(&pull), Progress::Failed { reason, has_logs: false, .. } if reason == "ImagePullBackOff")
        );
        let unsched = pod(json!({"phase": "Pending", "conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
             "message": "0/1 nodes are available: 1 Insufficient cpu."}]}));
        assert!(
            matches!(progress(&unsched), Progress::Failed { message, .. } if message.contains("Insufficient cpu"))
        );
        let crash = pod(
            json!({"phase": "Running", "podIP": "10.0.0.7", "containerStatuses": [
            {"name": "mariadb", "image": "m", "imageID": "", "ready": false, "restartCount": 2,
             "lastState": {"terminated": {"exitCode": 1}},
             "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}),
        );
        assert!(matches!(
            progress(&crash),
            Progress::Failed { has_logs: true, .. }
        ));
        let mut gone = running.clone();
        gone.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        assert_eq!(progress(&gone), Progress::Terminating);
        assert!(!is_live(&gone));
    }
}

//! containerd's task events for the agent's namespace: the exits and OOM kills of
//! instances, as the shim reports them.

use std::time::SystemTime;

use containerd_client::events::{TaskExit, TaskOom};
use containerd_client::services::v1::SubscribeRequest;
use futures_util::{Stream, StreamExt};
use prost::Message;

use crate::containerd::{call_err, Containerd, ContainerdError};

/// Something that happened to an instance's task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TaskEvent {
    /// The init process of the container ended.
    Exit {
        /// The container (instance) id.
        container: String,
        /// Its exit status (128 + the signal when a signal killed it).
        status: u32,
        /// When.
        at: SystemTime,
    },
    /// The kernel's OOM killer acted in the container's cgroup.
    Oom {
        /// The container (instance) id.
        container: String,
    },
}

/// Subscribes to the exits and OOM kills of the namespace's tasks.
pub async fn subscribe(
    cd: &Containerd,
) -> Result<impl Stream<Item = Result<TaskEvent, ContainerdError>> + Send + 'static, ContainerdError> {
    let ns = cd.namespace();
    let filters = ["/tasks/exit", "/tasks/oom"]
        .iter()
        .map(|topic| format!("namespace=={ns},topic==\"{topic}\""))
        .collect();
    let stream = cd
        .events()
        .subscribe(cd.req(SubscribeRequest { filters }))
        .await
        .map_err(call_err("subscribe to task events"))?
        .into_inner();
    Ok(stream.filter_map(|envelope| async move {
        match envelope {
            Err(s) => Some(Err(call_err("task events")(s))),
            Ok(e) => decode(e.event.as_ref()?).map(Ok),
        }
    }))
}

/// The event in a containerd envelope, if it is one the agent acts on.
fn decode(any: &prost_types::Any) -> Option<TaskEvent> {
    match any.type_url.rsplit('/').next().unwrap_or(&any.type_url) {
        "containerd.events.TaskExit" => {
            let e = TaskExit::decode(any.value.as_slice()).ok()?;
            // Exits of exec'd processes are not the instance's.
            if !e.id.is_empty() && e.id != e.container_id {
                return None;
            }
            let at = e.exited_at.and_then(|t| SystemTime::try_from(t).ok()).unwrap_or_else(SystemTime::now);
            Some(TaskEvent::Exit { container: e.container_id, status: e.exit_status, at })
        }
        "containerd.events.TaskOOM" => {
            let e = TaskOom::decode(any.value.as_slice()).ok()?;
            Some(TaskEvent::Oom { container: e.container_id })
        }
        _ => None,
    }
}

/// Why an instance ended, in words, from its exit status (None: not known, it ended while
/// the agent was not watching) and whether it was OOM-killed.
pub fn reason(status: Option<u32>, oom: bool, memory_mb: u32) -> (&'static str, String) {
    let Some(status) = status else {
        let why = if oom { "out of memory (its cgroup counted an OOM kill)" } else { "exit status unknown" };
        return (
            if oom { "oom-killed" } else { "crashed" },
            format!("its process ended while the agent was not receiving containerd's events; {why}"),
        );
    };
    if oom {
        return (
            "oom-killed",
            format!(
                "out of memory: it used all of its {memory_mb} MB and the kernel's OOM killer \
                 ended it (exit status {status}); give the function more memory"
            ),
        );
    }
    match status {
        0 => ("exited", "its process exited with status 0; a function's server must keep running".into()),
        s if s > 128 && s < 128 + 65 => ("crashed", format!("its process was killed by signal {}", s - 128)),
        s => ("crashed", format!("its process exited with status {s}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any<M: Message>(name: &str, m: &M) -> prost_types::Any {
        prost_types::Any { type_url: format!("containerd.events.{name}"), value: m.encode_to_vec() }
    }

    #[test]
    fn exits_and_ooms_are_decoded_and_exec_exits_skipped() {
        let exit = TaskExit {
            container_id: "f-1".into(),
            id: "f-1".into(),
            pid: 7,
            exit_status: 137,
            exited_at: None,
        };
        assert!(matches!(
            decode(&any("TaskExit", &exit)),
            Some(TaskEvent::Exit { container, status: 137, .. }) if container == "f-1"
        ));
        let exec = TaskExit { id: "exec-1".into(), ..exit };
        assert_eq!(decode(&any("TaskExit", &exec)), None);
        let oom = TaskOom { container_id: "f-1".into() };
        assert_eq!(decode(&any("TaskOOM", &oom)), Some(TaskEvent::Oom { container: "f-1".into() }));
    }

    #[test]
    fn reasons_say_what_happened() {
        assert_eq!(reason(Some(137), true, 128).0, "oom-killed");
        assert!(reason(Some(137), true, 128).1.contains("all of its 128 MB"));
        assert_eq!(reason(Some(139), false, 128), ("crashed", "its process was killed by signal 11".into()));
        assert_eq!(reason(Some(3), false, 128), ("crashed", "its process exited with status 3".into()));
        assert_eq!(reason(Some(0), false, 128).0, "exited");
        assert!(reason(None, false, 128).1.contains("while the agent was not receiving"));
    }
}

//! `Create`: the bundle's spec turned into the guest's, the container's files put into the
//! pod share, the pod VM booted when this is its first container, the container created
//! by the agent. A create that fails leaves nothing behind: no container, no pod it started,
//! no files in the state directory, no event; nor does one that the shim's shutdown
//! overtook (see `shutdown`).

use husk_lock::MutexExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use containerd_shim_protos::api::{CreateTaskRequest, CreateTaskResponse};
use containerd_shim_protos::events::task::{TaskCreate, TaskIO};
use containerd_shim_protos::protobuf::MessageField;
use containerd_shim_protos::types::mount::Mount;

use crate::annotations::{PodRole, VmSize};
use crate::convert::CreateTask;
use crate::error::ShimError;
use crate::events::TaskEvent;
use crate::host_cgroup::CgroupTarget;
use crate::mounts;
use crate::pod::ContainerFiles;
use crate::process::Process;
use crate::sandbox::SandboxPaths;
use crate::spec;
use crate::stdio::IoRelay;

use super::{Container, Result, TaskService};

impl TaskService {
    pub(super) fn do_create(&self, req: &CreateTaskRequest) -> Result<CreateTaskResponse> {
        // Held to the end: a shutdown waits for it.
        let _in_flight = self.begin_create()?;
        let task = CreateTask::try_from(req)?;
        let oci = spec::read_bundle_spec(&task.bundle)?;
        let annotations = oci.annotations().clone().unwrap_or_default();
        let role = PodRole::from_annotations(&annotations)?;
        let size = VmSize::from_annotations(&self.config, &annotations)?;
        // Parsed (and so checked) before anything is made; used when this container's pod
        // VM starts here.
        let cgroup = CgroupTarget {
            path: spec::cgroups_path(&oci)?,
            namespace: self.namespace.clone(),
            pod_id: role.pod_id(&task.id).to_string(),
        };
        if self.containers().contains_key(&task.id) {
            return Err(ShimError::AlreadyExists(format!(
                "container {} already exists",
                task.id
            )));
        }
        let root = spec::host_root(&oci, &task.bundle)?;
        if task.rootfs.is_empty() && !root.is_dir() {
            // Checked before a VM is started for it.
            return Err(mounts::MountError::MissingRootfs(root).into());
        }
        let spec::GuestSpec {
            spec: guest,
            binds,
            pod: pod_namespaces,
        } = spec::guest_spec(oci, &role)?;
        let json = serde_json::to_vec(&guest)
            .map_err(|e| ShimError::Internal(format!("encode spec: {e}")))?;

        let paths = SandboxPaths::new(
            &self.config.state_dir,
            &self.namespace,
            role.pod_id(&task.id),
        );
        let cdir = paths.container_dir(&task.id);
        let discard = |e: ShimError| {
            mounts::remove_tree_or_warn(&cdir);
            if self.pod.locked().is_none() {
                mounts::remove_tree_or_warn(&paths.dir);
            }
            e
        };
        let files = ContainerFiles {
            rootfs: &task.rootfs,
            root: &root,
            binds: &binds,
        };
        let prepare_share = || -> Result<()> { Ok(self.launcher.share_container(&cdir, files)?) };
        let (vm, started_here) = self
            .sandbox_for(&role, &task.id, size, &cgroup, &prepare_share)
            .map_err(discard)?;
        let agent = vm.agent();
        let pid = agent
            .create_container(&task.id, &json, pod_namespaces.as_ref())
            .map_err(|e| {
                tracing::warn!(
                    "create {} in the guest failed: {e}; host view of the rootfs: {} entries\n{}",
                    task.id,
                    std::fs::read_dir(cdir.join("rootfs")).map_or(0, |d| d.count()),
                    vm.diagnostics()
                );
                mounts::remove_tree_or_warn(&cdir);
                if started_here && self.containers().is_empty() {
                    self.destroy_pod();
                }
                ShimError::from(e)
            })?;

        if let Err(e) = self.check_open() {
            // The shim began shutting down during this create: undone here, so that
            // nothing is registered (or published) after the shutdown's teardown.
            mounts::remove_tree_or_warn(&cdir);
            if started_here && self.containers().is_empty() {
                self.destroy_pod();
            }
            return Err(e);
        }
        let init = Arc::new(Process::new(&task.id, "", task.stdio.clone(), Vec::new()));
        init.set_pid(pid);
        init.set_relay(IoRelay::start(agent, &task.id, "", &task.stdio));
        self.containers().insert(
            task.id.clone(),
            Arc::new(Container {
                bundle: task.bundle.clone(),
                init,
                execs: Mutex::new(HashMap::new()),
            }),
        );
        self.events.publish(TaskEvent::Create(TaskCreate {
            container_id: task.id.clone(),
            bundle: req.bundle.clone(),
            rootfs: req.rootfs.iter().map(Mount::clone).collect(),
            io: MessageField::some(TaskIO {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
                ..Default::default()
            }),
            pid,
            ..Default::default()
        }));
        Ok(CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }
}

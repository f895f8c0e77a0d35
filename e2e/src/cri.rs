//! A small blocking client of the Kubernetes CRI (v1) over containerd's unix
//! socket, for end-to-end tests: the RuntimeService and ImageService calls
//! the tests need, each with a time limit and errors that name the call.
//!
//! The messages and gRPC stubs are `k8s-cri`'s (generated from the CRI
//! protos with tonic/prost); this module only adds the unix-socket transport,
//! a current-thread tokio runtime to block on, and typed results.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    Container, ContainerConfig, ContainerFilter, ContainerStats, ContainerStatsRequest,
    ContainerStatus, ContainerStatusRequest, CreateContainerRequest, ExecSyncRequest,
    ExecSyncResponse, Image, ImageSpec, ImageStatusRequest, ListContainersRequest,
    ListPodSandboxRequest, PodSandbox, PodSandboxConfig, RemoveContainerRequest,
    RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest, StopContainerRequest,
    StopPodSandboxRequest, VersionRequest, VersionResponse,
};
use tonic::transport::{Channel, Endpoint, Uri};

pub use k8s_cri::v1 as api;

pub mod setup;

/// Errors of CRI calls.
#[derive(Debug, thiserror::Error)]
pub enum CriError {
    /// The tokio runtime could not be built.
    #[error("tokio runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// The socket could not be connected.
    #[error("connect to CRI at {socket}: {source}")]
    Connect {
        /// containerd's socket.
        socket: PathBuf,
        /// Why.
        #[source]
        source: tonic::transport::Error,
    },
    /// The runtime answered with an error.
    #[error("CRI {call}: {code:?}: {message}")]
    Status {
        /// The RPC.
        call: &'static str,
        /// gRPC status code.
        code: tonic::Code,
        /// The runtime's message.
        message: String,
    },
    /// The runtime did not answer in time.
    #[error("CRI {call}: no answer within {after:?}")]
    Timeout {
        /// The RPC.
        call: &'static str,
        /// The limit.
        after: Duration,
    },
}

/// A connected CRI client; every call blocks until the answer or its time limit.
pub struct CriClient {
    rt: tokio::runtime::Runtime,
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
    timeout: Duration,
}

impl std::fmt::Debug for CriClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CriClient")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl CriClient {
    /// Connects to the CRI server on unix socket `socket`; each call may take `timeout`.
    pub fn connect(socket: &Path, timeout: Duration) -> Result<Self, CriError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(CriError::Runtime)?;
        let path = socket.to_path_buf();
        // The URI is required by tonic but unused: the connector dials the socket.
        let endpoint = Endpoint::from_static("http://[::]:0").connect_timeout(timeout);
        let channel = rt
            .block_on(
                endpoint.connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        let stream = tokio::net::UnixStream::connect(path).await?;
                        Ok::<_, std::io::Error>(TokioIo::new(stream))
                    }
                })),
            )
            .map_err(|source| CriError::Connect {
                socket: socket.to_path_buf(),
                source,
            })?;
        Ok(Self {
            rt,
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
            timeout,
        })
    }

    fn call<T>(
        &self,
        call: &'static str,
        fut: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, CriError> {
        let after = self.timeout;
        // The timer must be made inside the runtime.
        match self
            .rt
            .block_on(async move { tokio::time::timeout(after, fut).await })
        {
            Err(_) => Err(CriError::Timeout { call, after }),
            Ok(Err(status)) => Err(CriError::Status {
                call,
                code: status.code(),
                message: status.message().to_string(),
            }),
            Ok(Ok(resp)) => Ok(resp.into_inner()),
        }
    }

    /// `Version`: the runtime's name and version.
    pub fn version(&self) -> Result<VersionResponse, CriError> {
        let mut c = self.runtime.clone();
        let req = VersionRequest {
            version: "v1".into(),
        };
        self.call("Version", async move { c.version(req).await })
    }

    /// `ImageStatus`: the image `reference`, or `None` when the runtime does not have it.
    pub fn image_status(&self, reference: &str) -> Result<Option<Image>, CriError> {
        let mut c = self.images.clone();
        let req = ImageStatusRequest {
            image: Some(ImageSpec {
                image: reference.into(),
                ..Default::default()
            }),
            verbose: false,
        };
        Ok(self
            .call("ImageStatus", async move { c.image_status(req).await })?
            .image)
    }

    /// `RunPodSandbox` with runtime handler `handler`; returns the sandbox id.
    pub fn run_pod_sandbox(
        &self,
        config: &PodSandboxConfig,
        handler: &str,
    ) -> Result<String, CriError> {
        let mut c = self.runtime.clone();
        let req = RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.into(),
        };
        Ok(self
            .call("RunPodSandbox", async move { c.run_pod_sandbox(req).await })?
            .pod_sandbox_id)
    }

    /// `StopPodSandbox`.
    pub fn stop_pod_sandbox(&self, id: &str) -> Result<(), CriError> {
        let mut c = self.runtime.clone();
        let req = StopPodSandboxRequest {
            pod_sandbox_id: id.into(),
        };
        self.call(
            "StopPodSandbox",
            async move { c.stop_pod_sandbox(req).await },
        )
        .map(drop)
    }

    /// `RemovePodSandbox`.
    pub fn remove_pod_sandbox(&self, id: &str) -> Result<(), CriError> {
        let mut c = self.runtime.clone();
        let req = RemovePodSandboxRequest {
            pod_sandbox_id: id.into(),
        };
        self.call("RemovePodSandbox", async move {
            c.remove_pod_sandbox(req).await
        })
        .map(drop)
    }

    /// `ListPodSandbox` without a filter.
    pub fn list_pod_sandboxes(&self) -> Result<Vec<PodSandbox>, CriError> {
        let mut c = self.runtime.clone();
        let req = ListPodSandboxRequest { filter: None };
        Ok(self
            .call(
                "ListPodSandbox",
                async move { c.list_pod_sandbox(req).await },
            )?
            .items)
    }

    /// `CreateContainer` in pod `pod_id` (whose config was `sandbox`); returns its id. As
    /// the kubelet does, a container whose config names no namespace options gets the
    /// pod's (containerd reads them from the container's security context, and an unset
    /// PID mode means POD there).
    pub fn create_container(
        &self,
        pod_id: &str,
        config: &ContainerConfig,
        sandbox: &PodSandboxConfig,
    ) -> Result<String, CriError> {
        let mut c = self.runtime.clone();
        let mut config = config.clone();
        let pod_namespaces = sandbox
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.clone());
        let security = config
            .linux
            .get_or_insert_with(Default::default)
            .security_context
            .get_or_insert_with(Default::default);
        if security.namespace_options.is_none() {
            security.namespace_options = pod_namespaces;
        }
        let req = CreateContainerRequest {
            pod_sandbox_id: pod_id.into(),
            config: Some(config),
            sandbox_config: Some(sandbox.clone()),
        };
        Ok(self
            .call(
                "CreateContainer",
                async move { c.create_container(req).await },
            )?
            .container_id)
    }

    /// `StartContainer`.
    pub fn start_container(&self, id: &str) -> Result<(), CriError> {
        let mut c = self.runtime.clone();
        let req = StartContainerRequest {
            container_id: id.into(),
        };
        self.call(
            "StartContainer",
            async move { c.start_container(req).await },
        )
        .map(drop)
    }

    /// `StopContainer`: the stop signal, then SIGKILL after `grace` (whole seconds).
    pub fn stop_container(&self, id: &str, grace: Duration) -> Result<(), CriError> {
        let mut c = self.runtime.clone();
        let req = StopContainerRequest {
            container_id: id.into(),
            timeout: i64::try_from(grace.as_secs()).unwrap_or(i64::MAX),
        };
        self.call("StopContainer", async move { c.stop_container(req).await })
            .map(drop)
    }

    /// `RemoveContainer`.
    pub fn remove_container(&self, id: &str) -> Result<(), CriError> {
        let mut c = self.runtime.clone();
        let req = RemoveContainerRequest {
            container_id: id.into(),
        };
        self.call(
            "RemoveContainer",
            async move { c.remove_container(req).await },
        )
        .map(drop)
    }

    /// `ContainerStats` of container `id` (CPU, memory, writable layer), as the
    /// kubelet polls them.
    pub fn container_stats(&self, id: &str) -> Result<Option<ContainerStats>, CriError> {
        let mut c = self.runtime.clone();
        let req = ContainerStatsRequest {
            container_id: id.into(),
        };
        Ok(self
            .call(
                "ContainerStats",
                async move { c.container_stats(req).await },
            )?
            .stats)
    }

    /// `ContainerStatus` of container `id`.
    pub fn container_status(&self, id: &str) -> Result<Option<ContainerStatus>, CriError> {
        let mut c = self.runtime.clone();
        let req = ContainerStatusRequest {
            container_id: id.into(),
            verbose: false,
        };
        Ok(self
            .call(
                "ContainerStatus",
                async move { c.container_status(req).await },
            )?
            .status)
    }

    /// `ListContainers` of pod `pod_id` (all pods when empty).
    pub fn list_containers(&self, pod_id: &str) -> Result<Vec<Container>, CriError> {
        let mut c = self.runtime.clone();
        let filter = (!pod_id.is_empty()).then(|| ContainerFilter {
            pod_sandbox_id: pod_id.into(),
            ..Default::default()
        });
        let req = ListContainersRequest { filter };
        Ok(self
            .call(
                "ListContainers",
                async move { c.list_containers(req).await },
            )?
            .containers)
    }

    /// `ExecSync` of `cmd` in container `id`, which the runtime stops after `limit`
    /// (whole seconds, at least one).
    pub fn exec_sync(
        &self,
        id: &str,
        cmd: &[&str],
        limit: Duration,
    ) -> Result<ExecSyncResponse, CriError> {
        let mut c = self.runtime.clone();
        let req = ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: i64::try_from(limit.as_secs().max(1)).unwrap_or(i64::MAX),
        };
        self.call("ExecSync", async move { c.exec_sync(req).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_socket_is_a_connect_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("none.sock");
        let err = CriClient::connect(&socket, Duration::from_secs(2)).expect_err("no socket");
        assert!(matches!(err, CriError::Connect { .. }), "{err}");
        assert!(err.to_string().contains("none.sock"), "{err}");
    }

    #[test]
    fn a_silent_server_is_a_timeout_naming_the_call() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("silent.sock");
        let listener = std::os::unix::net::UnixListener::bind(&socket).expect("bind");
        // Accepts and holds connections without ever answering.
        std::thread::spawn(move || {
            let held: Vec<_> = listener.incoming().take(4).collect();
            std::thread::sleep(Duration::from_secs(30));
            drop(held);
        });
        let limit = Duration::from_millis(300);
        let cri = CriClient::connect(&socket, limit).expect("connect");
        let started = std::time::Instant::now();
        let err = cri.version().expect_err("no answer");
        assert!(
            matches!(err, CriError::Timeout { call: "Version", after } if after == limit),
            "{err}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}

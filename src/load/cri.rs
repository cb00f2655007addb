//! A minimal CRI v1 gRPC client over CRI-O's unix socket.
//!
//! Owns only the three calls `load` needs: `RuntimeService/Version`,
//! `ImageService/ListImages` and `ImageService/ImageStatus`. The messages are declared by
//! hand with prost derives (no protoc at build time), keeping only the fields pinbundle
//! reads; prost skips unknown fields, so newer runtimes stay compatible. Field numbers are
//! those of kubernetes/cri-api `pkg/apis/runtime/v1/api.proto` (package `runtime.v1`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use http::uri::PathAndQuery;
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

/// CRI-O's default socket.
pub const DEFAULT_SOCKET: &str = "/var/run/crio/crio.sock";

/// Messages of `runtime.v1`, trimmed to the fields pinbundle uses.
pub mod proto {
    /// `VersionRequest`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct VersionRequest {
        #[prost(string, tag = "1")]
        pub version: String,
    }

    /// `VersionResponse`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct VersionResponse {
        #[prost(string, tag = "1")]
        pub version: String,
        #[prost(string, tag = "2")]
        pub runtime_name: String,
        #[prost(string, tag = "3")]
        pub runtime_version: String,
        #[prost(string, tag = "4")]
        pub runtime_api_version: String,
    }

    /// `ImageSpec` (annotations, user_specified_image, runtime_handler omitted).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ImageSpec {
        #[prost(string, tag = "1")]
        pub image: String,
    }

    /// `ImageFilter`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ImageFilter {
        #[prost(message, optional, tag = "1")]
        pub image: Option<ImageSpec>,
    }

    /// `ListImagesRequest`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ListImagesRequest {
        #[prost(message, optional, tag = "1")]
        pub filter: Option<ImageFilter>,
    }

    /// `Image` (uid, username, spec omitted).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Image {
        #[prost(string, tag = "1")]
        pub id: String,
        #[prost(string, repeated, tag = "2")]
        pub repo_tags: Vec<String>,
        #[prost(string, repeated, tag = "3")]
        pub repo_digests: Vec<String>,
        #[prost(uint64, tag = "4")]
        pub size: u64,
        #[prost(bool, tag = "8")]
        pub pinned: bool,
    }

    /// `ListImagesResponse`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ListImagesResponse {
        #[prost(message, repeated, tag = "1")]
        pub images: Vec<Image>,
    }

    /// `ImageStatusRequest`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ImageStatusRequest {
        #[prost(message, optional, tag = "1")]
        pub image: Option<ImageSpec>,
        #[prost(bool, tag = "2")]
        pub verbose: bool,
    }

    /// `ImageStatusResponse` (verbose `info` map omitted). `image` is unset when the image
    /// is not present.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ImageStatusResponse {
        #[prost(message, optional, tag = "1")]
        pub image: Option<Image>,
    }

    /// `ImageFsInfoRequest`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ImageFsInfoRequest {}

    /// `FilesystemIdentifier`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct FilesystemIdentifier {
        #[prost(string, tag = "1")]
        pub mountpoint: String,
    }

    /// `FilesystemUsage` (timestamp, used bytes and inodes omitted).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct FilesystemUsage {
        #[prost(message, optional, tag = "2")]
        pub fs_id: Option<FilesystemIdentifier>,
    }

    /// `ImageFsInfoResponse`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ImageFsInfoResponse {
        #[prost(message, repeated, tag = "1")]
        pub image_filesystems: Vec<FilesystemUsage>,
        #[prost(message, repeated, tag = "2")]
        pub container_filesystems: Vec<FilesystemUsage>,
    }
}

const VERSION: &str = "/runtime.v1.RuntimeService/Version";
const LIST_IMAGES: &str = "/runtime.v1.ImageService/ListImages";
const IMAGE_STATUS: &str = "/runtime.v1.ImageService/ImageStatus";
const IMAGE_FS_INFO: &str = "/runtime.v1.ImageService/ImageFsInfo";

/// Why the CRI could not be asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CriError {
    #[error("could not connect to the CRI socket `{socket}`")]
    Connect {
        socket: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("CRI call {method} on `{socket}` failed")]
    Call {
        socket: PathBuf,
        method: &'static str,
        #[source]
        source: Box<tonic::Status>,
    },
    #[error("CRI call {method} on `{socket}` timed out after {timeout:?}")]
    Timeout {
        socket: PathBuf,
        method: &'static str,
        timeout: Duration,
    },
}

impl CriError {
    /// The runtime did not answer in time (as opposed to refusing or answering with an error).
    pub fn is_timeout(&self) -> bool {
        use std::error::Error as _;
        // tonic's own deadlines: the endpoint's request timeout (a `Cancelled` status caused
        // by `TimeoutExpired`) and its connect timeout (tower's `Elapsed`).
        let caused_by_timeout = |mut cause: Option<&(dyn std::error::Error + 'static)>| {
            while let Some(c) = cause {
                if c.is::<tonic::TimeoutExpired>() || c.is::<tower::timeout::error::Elapsed>() {
                    return true;
                }
                cause = c.source();
            }
            false
        };
        match self {
            CriError::Timeout { .. } => true,
            CriError::Connect { source, .. } => caused_by_timeout(source.source()),
            CriError::Call { source, .. } => {
                source.code() == tonic::Code::DeadlineExceeded || caused_by_timeout(source.source())
            }
        }
    }
}

/// A connected CRI client.
#[derive(Debug, Clone)]
pub struct CriClient {
    socket: PathBuf,
    grpc: tonic::client::Grpc<Channel>,
    call_timeout: Duration,
}

impl CriClient {
    /// Connect to the CRI over the unix socket `socket`. Each call gets `call_timeout`.
    ///
    /// # Errors
    /// The socket does not accept an HTTP/2 connection.
    pub async fn connect(socket: &Path, call_timeout: Duration) -> Result<CriClient, CriError> {
        let path = socket.to_path_buf();
        // The URI is required by tonic but unused: the connector dials the socket.
        let endpoint = Endpoint::from_static("http://[::1]:0")
            .connect_timeout(call_timeout)
            .timeout(call_timeout);
        let channel = endpoint
            .connect_with_connector(tower::service_fn(move |_: http::Uri| {
                let path = path.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(TokioIo::new(stream))
                }
            }))
            .await
            .map_err(|source| CriError::Connect {
                socket: socket.to_path_buf(),
                source,
            })?;
        Ok(CriClient {
            socket: socket.to_path_buf(),
            grpc: tonic::client::Grpc::new(channel),
            call_timeout,
        })
    }

    /// The socket this client talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    async fn unary<Req, Resp>(&mut self, method: &'static str, req: Req) -> Result<Resp, CriError>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        let socket = self.socket.clone();
        tracing::debug!(method, socket = %socket.display(), "CRI call");
        let call_err = |source: tonic::Status| CriError::Call {
            socket: socket.clone(),
            method,
            source: Box::new(source),
        };
        let fut = async {
            self.grpc
                .ready()
                .await
                .map_err(|e| call_err(tonic::Status::unavailable(e.to_string())))?;
            let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
            self.grpc
                .unary(
                    tonic::Request::new(req),
                    PathAndQuery::from_static(method),
                    codec,
                )
                .await
                .map(tonic::Response::into_inner)
                .map_err(call_err)
        };
        match tokio::time::timeout(self.call_timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(CriError::Timeout {
                socket: self.socket.clone(),
                method,
                timeout: self.call_timeout,
            }),
        }
    }

    /// `RuntimeService/Version`.
    ///
    /// # Errors
    /// The call failed or timed out.
    pub async fn version(&mut self) -> Result<proto::VersionResponse, CriError> {
        self.unary(
            VERSION,
            proto::VersionRequest {
                version: "v1".to_string(),
            },
        )
        .await
    }

    /// `ImageService/ListImages` without a filter.
    ///
    /// # Errors
    /// The call failed or timed out.
    pub async fn list_images(&mut self) -> Result<Vec<proto::Image>, CriError> {
        let resp: proto::ListImagesResponse = self
            .unary(LIST_IMAGES, proto::ListImagesRequest { filter: None })
            .await?;
        Ok(resp.images)
    }

    /// `ImageService/ImageStatus` for `image` (a reference or ID). `Ok(None)` = not present.
    ///
    /// # Errors
    /// The call failed or timed out.
    pub async fn image_status(&mut self, image: &str) -> Result<Option<proto::Image>, CriError> {
        let resp: proto::ImageStatusResponse = self
            .unary(
                IMAGE_STATUS,
                proto::ImageStatusRequest {
                    image: Some(proto::ImageSpec {
                        image: image.to_string(),
                    }),
                    verbose: false,
                },
            )
            .await?;
        Ok(resp.image)
    }

    /// `ImageService/ImageFsInfo`: the mountpoints of the image filesystems. CRI-O reports
    /// `<root>/<driver>-images`, or `<imagestore>/<driver>-images` with an image store
    /// (cri-o `server/image_fs_info.go`).
    ///
    /// # Errors
    /// The call failed or timed out.
    pub async fn image_fs_mountpoints(&mut self) -> Result<Vec<PathBuf>, CriError> {
        let resp: proto::ImageFsInfoResponse = self
            .unary(IMAGE_FS_INFO, proto::ImageFsInfoRequest {})
            .await?;
        Ok(resp
            .image_filesystems
            .into_iter()
            .filter_map(|f| f.fs_id)
            .map(|id| PathBuf::from(id.mountpoint))
            .collect())
    }
}

//! CRI ImageService: translation to and from the domain image service.

use std::collections::HashMap;
use std::sync::Arc;

use cri_api::v1 as cri;
use cri_api::v1::image_service_server::ImageService as CriImageService;
use tonic::{Code, Request, Response, Status};
use tracing::{info_span, Instrument};

use crate::image::auth::Credentials;
use crate::image::registry::RegistryError;
use crate::image::{ImageError, ImageRecord, ImageService};

type Result<T> = std::result::Result<Response<T>, Status>;

pub struct Images {
    images: Arc<ImageService>,
}

impl Images {
    pub fn new(images: Arc<ImageService>) -> Images {
        Images { images }
    }
}

/// Images per message of StreamImages.
const STREAM_BATCH: usize = 1000;

impl Images {
    /// ListImages' answer: every image, or the one the filter names.
    fn filtered(&self, filter: Option<cri::ImageFilter>) -> Vec<cri::Image> {
        let name = filter.and_then(|f| f.image).map(|s| s.image).filter(|s| !s.is_empty());
        let images = match name {
            Some(name) => self.images.find(&name).into_iter().collect(),
            None => self.images.list(),
        };
        images.iter().map(to_cri).collect()
    }
}

fn image_name(spec: Option<&cri::ImageSpec>) -> std::result::Result<&str, Status> {
    match spec.map(|s| s.image.as_str()) {
        Some(name) if !name.is_empty() => Ok(name),
        _ => Err(Status::invalid_argument("image spec with a non-empty image is required")),
    }
}

/// The gRPC status for a domain error.
pub fn status_of(err: &ImageError) -> Status {
    let code = match err {
        ImageError::InvalidReference(_) | ImageError::InvalidAuth(_) => Code::InvalidArgument,
        ImageError::Registry { source, .. } => match source {
            RegistryError::NotFound { .. } => Code::NotFound,
            RegistryError::Unauthorized { .. } => Code::Unauthenticated,
            RegistryError::Unreachable { .. } | RegistryError::Transfer { .. } => Code::Unavailable,
            RegistryError::DigestMismatch { .. } | RegistryError::SizeMismatch { .. } => Code::DataLoss,
            // A registry that answers with an error status or nonsense is not usable now.
            RegistryError::Status { .. } | RegistryError::Protocol { .. } => Code::Unavailable,
            RegistryError::Io { .. } => Code::Internal,
        },
        ImageError::Manifest { source, .. } => match source {
            crate::image::manifest::ManifestError::NoPlatform(_) => Code::NotFound,
            _ => Code::FailedPrecondition,
        },
        ImageError::Unpack { .. } | ImageError::DiffId { .. } => Code::DataLoss,
        ImageError::Store(_) | ImageError::Io { .. } | ImageError::Internal(_) => Code::Internal,
    };
    super::status(code, err.to_string())
}

fn to_cri(img: &ImageRecord) -> cri::Image {
    let (uid, username) = img.uid_or_username();
    cri::Image {
        id: img.id.clone(),
        repo_tags: img.repo_tags.clone(),
        repo_digests: img.repo_digests.clone(),
        size: img.size,
        uid: uid.map(|value| cri::Int64Value { value }),
        username,
        spec: Some(cri::ImageSpec { image: img.id.clone(), ..Default::default() }),
        pinned: false,
    }
}

#[tonic::async_trait]
impl CriImageService for Images {
    async fn list_images(&self, req: Request<cri::ListImagesRequest>) -> Result<cri::ListImagesResponse> {
        Ok(Response::new(cri::ListImagesResponse { images: self.filtered(req.into_inner().filter) }))
    }

    type StreamImagesStream = super::ItemStream<cri::StreamImagesResponse>;

    async fn stream_images(&self, req: Request<cri::StreamImagesRequest>) -> Result<Self::StreamImagesStream> {
        let images = self.filtered(req.into_inner().filter);
        Ok(Response::new(super::batches(images, STREAM_BATCH, |images| cri::StreamImagesResponse { images })))
    }

    async fn image_status(&self, req: Request<cri::ImageStatusRequest>) -> Result<cri::ImageStatusResponse> {
        let req = req.into_inner();
        let name = image_name(req.image.as_ref())?;
        let Some(img) = self.images.find(name) else {
            // CRI: an image that is not present is a nil image, not an error.
            return Ok(Response::new(cri::ImageStatusResponse::default()));
        };
        let mut info = HashMap::new();
        if req.verbose {
            let config = self.images.config(&img).map_err(|e| status_of(&e))?;
            let config: serde_json::Value = serde_json::from_slice(&config)
                .map_err(|e| Status::internal(format!("image config of {}: {e}", img.id)))?;
            let layers = self.images.layer_paths(&img).map_err(|e| status_of(&e))?;
            let verbose = serde_json::json!({
                "id": img.id,
                "snapshots": layers,
                "manifestDigest": img.manifest_digest,
                "chainIDs": img.chain_ids,
                "pulledAt": img.pulled_at,
                "imageSpec": config,
            });
            info.insert("info".to_string(), verbose.to_string());
        }
        Ok(Response::new(cri::ImageStatusResponse { image: Some(to_cri(&img)), info }))
    }

    async fn pull_image(&self, req: Request<cri::PullImageRequest>) -> Result<cri::PullImageResponse> {
        let req = req.into_inner();
        let name = image_name(req.image.as_ref())?.to_string();
        let creds = match req.auth {
            Some(a) => Credentials::from_cri(&a.username, &a.password, &a.auth, &a.identity_token, &a.registry_token)
                .map_err(|e| status_of(&ImageError::InvalidAuth(e)))?,
            None => Credentials::default(),
        };
        let id = self
            .images
            .pull(&name, creds)
            .instrument(info_span!("pull", image = %name))
            .await
            .map_err(|e| status_of(&e))?;
        Ok(Response::new(cri::PullImageResponse { image_ref: id }))
    }

    async fn remove_image(&self, req: Request<cri::RemoveImageRequest>) -> Result<cri::RemoveImageResponse> {
        let req = req.into_inner();
        let name = image_name(req.image.as_ref())?;
        self.images.remove(name).await.map_err(|e| status_of(&e))?;
        Ok(Response::new(cri::RemoveImageResponse {}))
    }

    async fn image_fs_info(&self, _req: Request<cri::ImageFsInfoRequest>) -> Result<cri::ImageFsInfoResponse> {
        let usage = self.images.usage().map_err(|e| status_of(&e))?;
        let timestamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0);
        let fs = cri::FilesystemUsage {
            timestamp,
            fs_id: Some(cri::FilesystemIdentifier { mountpoint: self.images.snapshot_dir().display().to_string() }),
            used_bytes: Some(cri::UInt64Value { value: usage.bytes }),
            inodes_used: Some(cri::UInt64Value { value: usage.inodes }),
        };
        Ok(Response::new(cri::ImageFsInfoResponse { image_filesystems: vec![fs], container_filesystems: vec![] }))
    }
}

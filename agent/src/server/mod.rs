//! The CRI gRPC layer: thin translation between CRI messages and domain calls, and the mapping
//! of domain errors to gRPC status codes. Nothing here touches the filesystem.

mod image;
mod runtime;

use std::sync::Arc;

use k8s_cri::v1::image_service_server::ImageServiceServer;
use k8s_cri::v1::runtime_service_server::RuntimeServiceServer;
use tonic::transport::server::Router;
use tonic::transport::Server;

use crate::image::ImageService;
use crate::runtime::Runtime;

/// Biggest message accepted or sent (container logs and image lists can be large).
const MAX_MESSAGE: usize = 16 << 20;

/// Both CRI services, ready to serve.
pub fn router(images: Arc<ImageService>, rt: Arc<Runtime>) -> Router {
    let runtime = runtime::CriRuntime::new(rt);
    let image = image::Images::new(images);
    Server::builder()
        .add_service(RuntimeServiceServer::new(runtime).max_decoding_message_size(MAX_MESSAGE).max_encoding_message_size(MAX_MESSAGE))
        .add_service(ImageServiceServer::new(image).max_decoding_message_size(MAX_MESSAGE).max_encoding_message_size(MAX_MESSAGE))
}

fn unimplemented<T>(rpc: &str) -> Result<tonic::Response<T>, tonic::Status> {
    Err(tonic::Status::unimplemented(format!("{rpc} is not implemented by corral yet")))
}

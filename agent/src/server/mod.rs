//! The CRI gRPC layer: thin translation between CRI messages and domain calls, and the mapping
//! of domain errors to gRPC status codes. Nothing here touches the filesystem.

mod authority;
mod convert;
mod image;
mod runtime;

#[cfg(any(test, feature = "fuzzing"))]
pub use authority::rewrite_stream;
pub use authority::AuthorityFix;
#[cfg(any(test, feature = "fuzzing"))]
pub use convert::create_container_request;

use std::pin::Pin;
use std::sync::Arc;

use cri_api::v1::image_service_server::ImageServiceServer;
use cri_api::v1::runtime_service_server::RuntimeServiceServer;
use tonic::transport::server::Router;
use tonic::transport::Server;

use crate::image::ImageService;
use crate::runtime::Runtime;

/// Biggest message accepted or sent (container logs and image lists can be large).
const MAX_MESSAGE: usize = 16 << 20;

/// Both CRI services, ready to serve.
pub fn router(images: Arc<ImageService>, rt: Arc<Runtime>, streaming: Arc<crate::streaming::Streaming>) -> Router {
    let runtime = runtime::CriRuntime::new(rt, streaming);
    let image = image::Images::new(images);
    Server::builder()
        .add_service(
            RuntimeServiceServer::new(runtime)
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
        .add_service(
            ImageServiceServer::new(image)
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
}

fn unimplemented<T>(rpc: &str) -> Result<tonic::Response<T>, tonic::Status> {
    Err(tonic::Status::unimplemented(format!("{rpc} is not implemented by corral yet")))
}

/// The most a status message carries: requests can hold huge values (a 300 KB image reference),
/// and an error quoting one whole would break the client's metadata limit.
const MESSAGE_MAX: usize = 4096;

/// A status whose message is cut to `MESSAGE_MAX` bytes (at a character boundary).
pub fn status(code: tonic::Code, message: String) -> tonic::Status {
    if message.len() <= MESSAGE_MAX {
        return tonic::Status::new(code, message);
    }
    let mut end = MESSAGE_MAX;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    tonic::Status::new(code, format!("{}… ({} bytes cut)", &message[..end], message.len() - end))
}

/// The response stream of a server-streaming RPC.
pub type ItemStream<T> = Pin<Box<dyn futures::Stream<Item = Result<T, tonic::Status>> + Send>>;

/// `items` as a stream of messages of at most `size` items each (the Stream* list RPCs): every
/// item in exactly one message, and no message at all when there is no item.
pub fn batches<I: Send + 'static, T: Send + 'static>(
    items: Vec<I>,
    size: usize,
    wrap: impl Fn(Vec<I>) -> T,
) -> ItemStream<T> {
    let mut messages = Vec::new();
    let mut rest = items.into_iter().peekable();
    while rest.peek().is_some() {
        messages.push(Ok(wrap(rest.by_ref().take(size.max(1)).collect())));
    }
    Box::pin(futures::stream::iter(messages))
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    #[test]
    fn status_messages_are_bounded() {
        let short = super::status(tonic::Code::NotFound, "image \"x\" not found".into());
        assert_eq!(short.message(), "image \"x\" not found");
        let huge = super::status(tonic::Code::InvalidArgument, format!("invalid reference {}", "ü".repeat(200_000)));
        assert!(huge.message().len() < super::MESSAGE_MAX + 64, "{}", huge.message().len());
        assert!(huge.message().ends_with("bytes cut)"));
        assert_eq!(huge.code(), tonic::Code::InvalidArgument);
    }

    #[tokio::test]
    async fn batches_hold_every_item_once_and_nothing_when_empty() {
        let sizes = |n: usize, size: usize| async move {
            let stream = super::batches((0..n).collect::<Vec<_>>(), size, |v| v);
            stream.map(|m| m.unwrap()).collect::<Vec<Vec<usize>>>().await
        };
        assert!(sizes(0, 10).await.is_empty());
        assert_eq!(sizes(3, 10).await, vec![vec![0, 1, 2]]);
        let many = sizes(25, 10).await;
        assert_eq!(many.iter().map(|m| m.len()).collect::<Vec<_>>(), vec![10, 10, 5]);
        assert_eq!(many.concat(), (0..25).collect::<Vec<_>>());
    }
}

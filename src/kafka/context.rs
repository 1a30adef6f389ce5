//! The client context of docrepl's Kafka clients that need no callbacks of their own (the
//! dead-letter producers, the readers of `cutover` and of unique-index conflicts): it
//! answers librdkafka's OAUTHBEARER token refresh for `kafka.auth = "msk_iam"`, which
//! rdkafka's `DefaultClientContext` cannot. The contexts with callbacks of their own
//! (`delivery::AckContext`, `sink::group::GroupContext`, `access::AccessWatch`) answer it
//! the same way.

use rdkafka::client::OAuthToken;
use rdkafka::consumer::ConsumerContext;
use rdkafka::ClientContext;

#[derive(Debug, Clone, Copy, Default)]
pub struct KafkaContext;

impl ClientContext for KafkaContext {
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;
    fn generate_oauth_token(&self, _: Option<&str>) -> Result<OAuthToken, Box<dyn std::error::Error>> {
        super::msk_iam::oauth_token()
    }
}

impl ConsumerContext for KafkaContext {}

/// A consumer used for requests (offsets, metadata, a message at an offset) rather than
/// for reading along a topic. It may make requests before it ever polls, and polls
/// seldom, so with `msk_iam` its tokens come from `msk_iam::keep_token_fresh`, not from
/// the refresh events `poll` serves.
pub fn request_consumer(config: &rdkafka::ClientConfig) -> rdkafka::error::KafkaResult<std::sync::Arc<rdkafka::consumer::BaseConsumer<KafkaContext>>> {
    let consumer = std::sync::Arc::new(config.create_with_context(KafkaContext)?);
    super::msk_iam::keep_token_fresh(&consumer);
    Ok(consumer)
}

//! `docrepl digests`: the service that reads a cluster for a `repair` in another region.
//! It runs next to the cluster (the config's `[source]`), answers `repair`'s questions
//! (`namespaces`, `count`, `scan`, `chunks`, `forget`, `list`, `fetch`) over HTTP with
//! BSON bodies (zstd-compressed when the repair asks: see `squeeze`), so `_id`s keep their
//! exact types, and sends only digests, `_id` lists of differing spans and the documents
//! asked for. Every request needs the bearer token
//! (`DOCREPL_DIGESTS_TOKEN`), which the service refuses to start without unless it
//! listens on loopback only: it hands out the cluster's documents.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use bson::{doc, Bson, Document};
use clap::Args;
use tokio_util::sync::CancellationToken;

use super::side::{decode_spans, encode_chunk_lists, Local};
use super::squeeze;
use crate::config::Config;
use crate::event::Namespace;
use crate::source::SourceConfig;

/// The environment variable holding the token both ends use.
pub const TOKEN_VAR: &str = "DOCREPL_DIGESTS_TOKEN";

#[derive(Debug, Args)]
pub struct DigestsArgs {
    /// Where to listen (the repair in the other region connects here).
    #[arg(long, default_value = "127.0.0.1:8090")]
    pub listen: SocketAddr,
}

#[derive(Clone)]
struct Peer {
    local: Arc<Local>,
    source: Arc<SourceConfig>,
    token: Option<Arc<str>>,
}

/// Serves the config's `[source]` cluster until `shutdown`.
pub async fn run(config: &Config, args: &DigestsArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let src = config.source.as_ref().context("digests needs the [source] section: the cluster it reads")?;
    let token = std::env::var(TOKEN_VAR).ok().filter(|t| !t.is_empty());
    if token.is_none() && !args.listen.ip().is_loopback() {
        anyhow::bail!("digests listens on {} and serves the cluster's documents: set {TOKEN_VAR} (the repair sends the same), or listen on 127.0.0.1", args.listen);
    }
    let client = crate::mongo::connect(&src.uri, "source.uri", src.flavor().0).await?;
    let peer = Peer { local: Arc::new(Local::new(client, src.flavor().0)), source: Arc::new(src.clone()), token: token.map(Arc::from) };
    let app = Router::new().route("/repair/v1/{op}", post(answer)).with_state(peer);
    let listener = tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("cannot listen on {} (--listen): is another process using it?", args.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!("digests of {} listening on http://{addr}/repair/v1", crate::redact::redact_uri(&src.uri));
    axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.cancelled().await }).await.context("the digests listener stopped")?;
    Ok(())
}

async fn answer(State(peer): State<Peer>, Path(op): Path<String>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(token) = &peer.token {
        let given = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(token.as_ref()) {
            return (StatusCode::UNAUTHORIZED, format!("bearer token required (the one in {TOKEN_VAR})\n")).into_response();
        }
    }
    let marked = |name: header::HeaderName| headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).any(|v| v.split(',').any(|e| e.trim() == squeeze::ZSTD));
    let body = if marked(header::CONTENT_ENCODING) {
        match squeeze::unsqueeze(&body, super::side::MAX_BODY_BYTES) {
            Ok(plain) => Bytes::from(plain),
            Err(e) => return (StatusCode::BAD_REQUEST, format!("the request's zstd body cannot be read: {e}\n")).into_response(),
        }
    } else {
        body
    };
    let request: Document = match bson::from_slice(&body) {
        Ok(d) => d,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("the request is not a BSON document: {e}\n")).into_response(),
    };
    match dispatch(&peer, &op, &request).await {
        Ok(reply) => match bson::to_vec(&reply) {
            Ok(bytes) if marked(header::ACCEPT_ENCODING) => match squeeze::squeeze(bytes) {
                (packed, true) => ([(header::CONTENT_TYPE, "application/bson"), (header::CONTENT_ENCODING, squeeze::ZSTD)], packed).into_response(),
                (plain, false) => ([(header::CONTENT_TYPE, "application/bson")], plain).into_response(),
            },
            Ok(bytes) => ([(header::CONTENT_TYPE, "application/bson")], bytes).into_response(),
            Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("cannot encode the answer: {e}\n")).into_response(),
        },
        Err(e) => {
            tracing::warn!(op, "digest request failed: {e:#}");
            (StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}\n")).into_response()
        }
    }
}

fn namespace(request: &Document) -> anyhow::Result<Namespace> {
    let ns = request.get_str("ns").context("no ns")?;
    let (db, coll) = ns.split_once('.').with_context(|| format!("ns {ns:?} is not db.coll"))?;
    Ok(Namespace::new(db, coll))
}

fn bits(request: &Document) -> anyhow::Result<u32> {
    let bits = request.get_i32("bits").context("no bits")?;
    u32::try_from(bits).ok().filter(|b| *b <= 64).with_context(|| format!("bits {bits} is not a level"))
}

async fn dispatch(peer: &Peer, op: &str, request: &Document) -> anyhow::Result<Document> {
    let local = &peer.local;
    match op {
        "namespaces" => {
            let named: Vec<String> = Vec::new();
            let found = crate::verify::namespaces_to_compare(local.client(), &peer.source, &named).await?;
            Ok(doc! {"namespaces": found.iter().map(|n| Bson::String(n.to_string())).collect::<Vec<_>>()})
        }
        "count" => Ok(doc! {"count": local.estimated_count(&namespace(request)?).await? as i64}),
        "scan" => {
            let (scan, count) = local.scan(&namespace(request)?, bits(request)?).await?;
            Ok(doc! {"scan": scan, "count": count as i64})
        }
        "chunks" => {
            let spans = decode_spans(request.get_array("spans").context("no spans")?)?;
            let lists = local.chunks(request.get_i64("scan").context("no scan")?, &spans, bits(request)?)?;
            Ok(encode_chunk_lists(&lists))
        }
        "forget" => {
            local.forget(request.get_i64("scan").context("no scan")?);
            Ok(doc! {})
        }
        "list" => {
            let spans = decode_spans(request.get_array("spans").context("no spans")?)?;
            let entries = local.list(&namespace(request)?, &spans).await?;
            Ok(doc! {"entries": entries.into_iter().map(|(id, h)| Bson::Array(vec![id, Bson::Int64(h as i64)])).collect::<Vec<_>>()})
        }
        "digests" => {
            let spans = decode_spans(request.get_array("spans").context("no spans")?)?;
            let entries = local.list(&namespace(request)?, &spans).await?;
            let digests = super::digest::span_digests(&spans, &entries);
            Ok(doc! {"digests": digests.into_iter().map(|(c, d)| Bson::Array(vec![Bson::Int64(c as i64), Bson::Int64(d as i64)])).collect::<Vec<_>>()})
        }
        "fetch" => {
            let ids = request.get_array("ids").context("no ids")?;
            let (docs, covered) = local.fetch(&namespace(request)?, ids).await?;
            let docs: Vec<Bson> = docs.into_iter().map(|d| d.to_document().map(Bson::Document)).collect::<Result<_, _>>().context("a fetched document is not valid BSON")?;
            Ok(doc! {"docs": docs, "covered": covered as i64})
        }
        other => anyhow::bail!("no such request: {other}"),
    }
}

//! One cluster as `repair` reads it: `Local` reads it from this process (the side being
//! repaired, or a source in the same region), `Remote` asks a `docrepl digests` service
//! running next to it (see `peer`), so that across the link only chunk digests, `_id`
//! lists of the spans that differ, and the documents to write travel. Both answer the
//! same five questions; the service answers them with a `Local`.
//!
//! A scan reads a collection once in `_id` order and keeps its finest chunks in memory
//! (about one per 16 documents); the coarser levels the comparison starts with are sums of
//! those, so narrowing a difference down reads nothing again until the document lists.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use bson::{doc, Bson, Document, RawDocumentBuf};
use futures::TryStreamExt;

use super::digest::{coarsen, document_hash, raw_id_hash, span_digests, Chunk, Chunker, Span};
use super::range::span_filter;
use super::squeeze;
use crate::bson_order::compare;
use crate::event::Namespace;
use crate::flavor::Flavor;

/// Spans per `find` of document lists (one `$or` each).
const SPANS_PER_QUERY: usize = 64;
/// Requests in flight at once, to a digest service (a round trip of the link each) or to
/// the cluster (document lists): a long list of spans takes a few round trips instead of
/// one per group.
const IN_FLIGHT: usize = 4;
/// Spans per request to a digest service (chunk lists, document lists, span digests):
/// a few round trips for thousands of spans, and answers well under 16 MiB.
const SPANS_PER_REQUEST: usize = 1024;
/// `_id`s per `find` of documents to copy (one `$in` each).
pub(super) const FETCH_GROUP: usize = 256;
/// Scans a side keeps (the newest ones); a repair holds one at a time per side.
const SCANS_KEPT: usize = 8;
/// Largest reply of documents (BSON caps a document at 16 MiB).
pub const MAX_REPLY_BYTES: usize = 12 * 1024 * 1024;
/// Largest body either end of the digest service reads (plain, after decompression).
pub const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// A scan's handle, given back by `scan` and named in `chunks`.
pub type ScanId = i64;

/// A cluster read by this process.
pub struct Local {
    client: mongodb::Client,
    flavor: Flavor,
    scans: Mutex<BTreeMap<ScanId, Arc<Vec<Chunk>>>>,
    next_scan: AtomicU64,
    /// Bytes of documents read from the cluster.
    pub bytes_read: AtomicU64,
}

impl Local {
    pub fn new(client: mongodb::Client, flavor: Flavor) -> Local {
        Local { client, flavor, scans: Mutex::new(BTreeMap::new()), next_scan: AtomicU64::new(1), bytes_read: AtomicU64::new(0) }
    }

    pub fn client(&self) -> &mongodb::Client {
        &self.client
    }

    fn collection(&self, ns: &Namespace) -> mongodb::Collection<RawDocumentBuf> {
        self.client.database(&ns.db).collection(&ns.coll)
    }

    /// The collection's document count from its metadata (cheap, maybe stale): for
    /// choosing the levels only.
    pub async fn estimated_count(&self, ns: &Namespace) -> anyhow::Result<u64> {
        Ok(self.collection(ns).estimated_document_count().await?)
    }

    /// Reads the whole collection in `_id` order; keeps its chunks at level `bits`.
    pub async fn scan(&self, ns: &Namespace, bits: u32) -> anyhow::Result<(ScanId, u64)> {
        let mut cursor = self.collection(ns).find(doc! {}).sort(doc! {"_id": 1}).batch_size(10_000).await.with_context(|| format!("cannot read {ns}"))?;
        let mut chunker = Chunker::new(Bson::MinKey, bits);
        let (mut count, mut bytes) = (0u64, 0u64);
        // Each document is read where the cursor holds it (no copy) and its `_id` becomes
        // a `Bson` only where it starts a chunk: most of a scan's CPU was those two.
        while cursor.advance().await.with_context(|| format!("reading {ns}"))? {
            let d = cursor.current();
            let id = d.get("_id").ok().flatten().unwrap_or(bson::RawBsonRef::Null);
            chunker.push_hashed(raw_id_hash(id), || Bson::try_from(id).unwrap_or(Bson::Null), document_hash(d));
            count += 1;
            bytes += d.as_bytes().len() as u64;
        }
        self.bytes_read.fetch_add(bytes, AtomicOrdering::Relaxed);
        let id = self.next_scan.fetch_add(1, AtomicOrdering::Relaxed) as ScanId;
        let mut scans = self.scans.lock().map_err(|_| anyhow::anyhow!("scan table poisoned"))?;
        scans.insert(id, Arc::new(chunker.finish()));
        while scans.len() > SCANS_KEPT {
            scans.pop_first();
        }
        Ok((id, count))
    }

    /// The chunks at level `bits` of each span, from scan `scan`.
    pub fn chunks(&self, scan: ScanId, spans: &[Span], bits: u32) -> anyhow::Result<Vec<Vec<Chunk>>> {
        let fine = self.scans.lock().map_err(|_| anyhow::anyhow!("scan table poisoned"))?.get(&scan).cloned();
        let fine = fine.with_context(|| format!("scan {scan} is not kept any more (start the repair again)"))?;
        Ok(spans.iter().map(|s| coarsen(&within(&fine, s), bits)).collect())
    }

    /// Forgets a scan.
    pub fn forget(&self, scan: ScanId) {
        if let Ok(mut scans) = self.scans.lock() {
            scans.remove(&scan);
        }
    }

    /// `(_id, document hash)` of every document in the spans, in `_id` order (read now).
    pub async fn list(&self, ns: &Namespace, spans: &[Span]) -> anyhow::Result<Vec<(Bson, u64)>> {
        // A few queries at once: thousands of scattered spans are otherwise a long row of
        // small round trips to the cluster.
        let queries: Vec<_> = spans.chunks(SPANS_PER_QUERY).map(|group| Box::pin(self.list_group(ns, group))).collect();
        let mut out: Vec<(Bson, u64)> = in_flight(queries.into_iter()).await?.into_iter().flatten().collect();
        out.sort_by(|a, b| compare(&a.0, &b.0));
        Ok(out)
    }

    /// `list` of up to `SPANS_PER_QUERY` spans: one `find` (an `$or` of their ranges).
    async fn list_group(&self, ns: &Namespace, group: &[Span]) -> anyhow::Result<Vec<(Bson, u64)>> {
        let filters: Vec<Document> = group.iter().map(|s| span_filter(s, self.flavor)).collect();
        let filter = if filters.len() == 1 { filters.into_iter().next().unwrap_or_default() } else { doc! {"$or": filters} };
        let mut cursor = self.collection(ns).find(filter).sort(doc! {"_id": 1}).batch_size(10_000).await.with_context(|| format!("cannot read {ns}"))?;
        let (mut out, mut bytes) = (Vec::new(), 0u64);
        while let Some(d) = cursor.try_next().await.with_context(|| format!("reading {ns}"))? {
            bytes += d.as_bytes().len() as u64;
            out.push((id_of(&d), document_hash(&d)));
        }
        self.bytes_read.fetch_add(bytes, AtomicOrdering::Relaxed);
        Ok(out)
    }

    /// The documents with these `_id`s (those still there), up to `MAX_REPLY_BYTES`;
    /// also how many of `ids` that answer covers (the rest: ask again).
    pub async fn fetch(&self, ns: &Namespace, ids: &[Bson]) -> anyhow::Result<(Vec<RawDocumentBuf>, usize)> {
        let (mut docs, mut bytes, mut covered) = (Vec::new(), 0usize, 0usize);
        // Rounds of `IN_FLIGHT` queries at once, so the answer stops near its cap.
        for round in ids.chunks(FETCH_GROUP * IN_FLIGHT) {
            let groups: Vec<&[Bson]> = round.chunks(FETCH_GROUP).collect();
            let queries: Vec<_> = groups.iter().map(|group| Box::pin(self.fetch_group(ns, group))).collect();
            let found = in_flight(queries.into_iter()).await?;
            for (group, found) in groups.iter().zip(found) {
                let size: usize = found.iter().map(|d| d.as_bytes().len()).sum();
                if covered > 0 && bytes + size > MAX_REPLY_BYTES {
                    self.bytes_read.fetch_add(bytes as u64, AtomicOrdering::Relaxed);
                    return Ok((docs, covered));
                }
                bytes += size;
                covered += group.len();
                docs.extend(found);
            }
        }
        self.bytes_read.fetch_add(bytes as u64, AtomicOrdering::Relaxed);
        Ok((docs, covered))
    }

    /// One `find` of up to `FETCH_GROUP` `_id`s.
    async fn fetch_group(&self, ns: &Namespace, group: &[Bson]) -> anyhow::Result<Vec<RawDocumentBuf>> {
        let cursor = self.collection(ns).find(doc! {"_id": {"$in": group.to_vec()}}).await.with_context(|| format!("cannot read {ns}"))?;
        cursor.try_collect().await.with_context(|| format!("reading {ns}"))
    }
}

/// The fine chunks of `span` (a span always starts at a boundary both sides have, which is
/// a fine boundary here too; an empty chunk stands in if this scan lacks it).
fn within(fine: &[Chunk], span: &Span) -> Vec<Chunk> {
    let start = if matches!(span.lo, Bson::MinKey) { 0 } else { fine.partition_point(|c| compare(&c.first, &span.lo).is_lt()) };
    let end = if matches!(span.hi, Bson::MaxKey) { fine.len() } else { fine.partition_point(|c| compare(&c.first, &span.hi).is_lt()) };
    let mut out: Vec<Chunk> = fine[start..end.max(start)].to_vec();
    if out.first().is_none_or(|c| compare(&c.first, &span.lo).is_ne()) {
        out.insert(0, Chunk { first: span.lo.clone(), count: 0, digest: 0 });
    }
    out
}

pub(crate) fn id_of(doc: &RawDocumentBuf) -> Bson {
    doc.get("_id").ok().flatten().and_then(|v| Bson::try_from(v).ok()).unwrap_or(Bson::Null)
}

/// A cluster read through a `docrepl digests` service in its region.
pub struct Remote {
    url: String,
    token: Option<String>,
    agent: ureq::Agent,
    /// Bytes of requests and replies: what crossed the link.
    pub bytes_sent: AtomicU64,
    pub bytes_received: AtomicU64,
    /// The service has answered zstd-compressed, so it reads compressed requests too.
    peer_squeezes: AtomicBool,
}

impl Remote {
    pub fn new(url: &str, token: Option<String>) -> Remote {
        let agent = ureq::Agent::config_builder().timeout_global(Some(std::time::Duration::from_secs(3600))).http_status_as_error(false).build().new_agent();
        Remote { url: url.trim_end_matches('/').to_string(), token, agent, bytes_sent: AtomicU64::new(0), bytes_received: AtomicU64::new(0), peer_squeezes: AtomicBool::new(false) }
    }

    /// One request: a BSON document to `/repair/v1/<op>`, a BSON document back.
    pub async fn call(self: &Arc<Self>, op: &str, body: Document) -> anyhow::Result<Document> {
        let this = Arc::clone(self);
        let op = op.to_string();
        tokio::task::spawn_blocking(move || this.call_blocking(&op, &body)).await.context("the digest request's thread failed")?
    }

    fn call_blocking(&self, op: &str, body: &Document) -> anyhow::Result<Document> {
        let url = format!("{}/repair/v1/{op}", self.url);
        let plain = bson::to_vec(body).context("encoding a digest request")?;
        // Requests are compressed once the service has answered compressed (a service of an
        // older build reads plain BSON only).
        let (bytes, squeezed) = if self.peer_squeezes.load(AtomicOrdering::Relaxed) { squeeze::squeeze(plain) } else { (plain, false) };
        self.bytes_sent.fetch_add(bytes.len() as u64, AtomicOrdering::Relaxed);
        let mut request = self.agent.post(&url).header("content-type", "application/bson").header("accept-encoding", squeeze::ZSTD);
        if squeezed {
            request = request.header("content-encoding", squeeze::ZSTD);
        }
        if let Some(t) = &self.token {
            request = request.header("authorization", &format!("Bearer {t}"));
        }
        let mut reply = request.send(&bytes[..]).with_context(|| format!("cannot reach the digest service at {} (is `docrepl digests` running there?)", self.url))?;
        let status = reply.status();
        let packed = reply.headers().get("content-encoding").and_then(|v| v.to_str().ok()).is_some_and(|v| v.trim() == squeeze::ZSTD);
        let body = reply.body_mut().with_config().limit(MAX_BODY_BYTES as u64).read_to_vec().with_context(|| format!("reading the digest service's answer to {op}"))?;
        self.bytes_received.fetch_add(body.len() as u64, AtomicOrdering::Relaxed);
        if packed {
            self.peer_squeezes.store(true, AtomicOrdering::Relaxed);
        }
        let body = if packed { squeeze::unsqueeze(&body, MAX_BODY_BYTES).with_context(|| format!("the digest service's compressed answer to {op} cannot be read"))? } else { body };
        if !status.is_success() {
            anyhow::bail!("the digest service at {} refused {op}: {} {}", self.url, status.as_u16(), String::from_utf8_lossy(&body).trim());
        }
        bson::from_slice(&body).with_context(|| format!("the digest service's answer to {op} is not BSON"))
    }
}

/// Either side, behind one set of calls.
pub enum Side {
    Local(Arc<Local>),
    Remote(Arc<Remote>),
}

impl Side {
    pub async fn estimated_count(&self, ns: &Namespace) -> anyhow::Result<u64> {
        match self {
            Side::Local(l) => l.estimated_count(ns).await,
            Side::Remote(r) => {
                let reply = r.call("count", doc! {"ns": ns.to_string()}).await?;
                Ok(reply.get_i64("count").context("count: no count in the answer")? as u64)
            }
        }
    }

    pub async fn scan(&self, ns: &Namespace, bits: u32) -> anyhow::Result<(ScanId, u64)> {
        match self {
            Side::Local(l) => l.scan(ns, bits).await,
            Side::Remote(r) => {
                let reply = r.call("scan", doc! {"ns": ns.to_string(), "bits": bits as i32}).await?;
                Ok((reply.get_i64("scan").context("scan: no scan id")?, reply.get_i64("count").context("scan: no count")? as u64))
            }
        }
    }

    pub async fn chunks(&self, scan: ScanId, spans: &[Span], bits: u32) -> anyhow::Result<Vec<Vec<Chunk>>> {
        match self {
            Side::Local(l) => l.chunks(scan, spans, bits),
            Side::Remote(r) => {
                let replies = in_flight(spans.chunks(SPANS_PER_REQUEST).map(|group| r.call("chunks", doc! {"scan": scan, "bits": bits as i32, "spans": encode_spans(group)}))).await?;
                let mut out = Vec::with_capacity(spans.len());
                for reply in &replies {
                    out.extend(decode_chunk_lists(reply)?);
                }
                Ok(out)
            }
        }
    }

    pub async fn forget(&self, scan: ScanId) {
        match self {
            Side::Local(l) => l.forget(scan),
            Side::Remote(r) => {
                if let Err(e) = r.call("forget", doc! {"scan": scan}).await {
                    tracing::debug!("the digest service did not forget scan {scan}: {e:#}");
                }
            }
        }
    }

    pub async fn list(&self, ns: &Namespace, spans: &[Span]) -> anyhow::Result<Vec<(Bson, u64)>> {
        match self {
            Side::Local(l) => l.list(ns, spans).await,
            Side::Remote(r) => {
                let replies = in_flight(spans.chunks(SPANS_PER_REQUEST).map(|group| r.call("list", doc! {"ns": ns.to_string(), "spans": encode_spans(group)}))).await?;
                let mut out = Vec::new();
                for reply in &replies {
                    for entry in reply.get_array("entries").context("list: no entries")? {
                        let pair = entry.as_array().context("list: an entry is not a pair")?;
                        match pair.as_slice() {
                            [id, Bson::Int64(h)] => out.push((id.clone(), *h as u64)),
                            _ => anyhow::bail!("list: an entry is not (_id, hash)"),
                        }
                    }
                }
                Ok(out)
            }
        }
    }

    /// Each span's count and digest (spans sorted and disjoint): a digest service sends
    /// two numbers per span instead of the span's `(_id, hash)` list.
    pub async fn span_digests(&self, ns: &Namespace, spans: &[Span]) -> anyhow::Result<Vec<(u64, u64)>> {
        match self {
            Side::Local(l) => Ok(span_digests(spans, &l.list(ns, spans).await?)),
            Side::Remote(r) => {
                let replies = in_flight(spans.chunks(SPANS_PER_REQUEST).map(|group| r.call("digests", doc! {"ns": ns.to_string(), "spans": encode_spans(group)}))).await?;
                let mut out = Vec::with_capacity(spans.len());
                for reply in &replies {
                    for pair in reply.get_array("digests").context("digests: no digests")? {
                        match pair.as_array().map(Vec::as_slice) {
                            Some([Bson::Int64(count), Bson::Int64(digest)]) => out.push((*count as u64, *digest as u64)),
                            _ => anyhow::bail!("digests: an entry is not (count, digest)"),
                        }
                    }
                }
                anyhow::ensure!(out.len() == spans.len(), "digests: {} answers for {} spans", out.len(), spans.len());
                Ok(out)
            }
        }
    }

    /// The documents with these `_id`s that the side still has.
    pub async fn fetch(&self, ns: &Namespace, ids: &[Bson]) -> anyhow::Result<Vec<RawDocumentBuf>> {
        let mut out = Vec::new();
        let mut rest = ids;
        while !rest.is_empty() {
            let (docs, covered) = match self {
                Side::Local(l) => l.fetch(ns, rest).await?,
                Side::Remote(r) => {
                    let reply = r.call("fetch", doc! {"ns": ns.to_string(), "ids": rest.to_vec()}).await?;
                    let covered = reply.get_i64("covered").context("fetch: no covered count")? as usize;
                    let mut docs = Vec::new();
                    for d in reply.get_array("docs").context("fetch: no docs")? {
                        let d = d.as_document().context("fetch: a document is not one")?;
                        docs.push(RawDocumentBuf::from_document(d).context("fetch: a document cannot be encoded")?);
                    }
                    (docs, covered)
                }
            };
            if covered == 0 {
                anyhow::bail!("fetch of {ns}: a document is larger than one answer can carry");
            }
            out.extend(docs);
            rest = &rest[covered.min(rest.len())..];
        }
        Ok(out)
    }
}

/// Runs the requests `IN_FLIGHT` at a time; their answers in order, or the first error
/// (no request starts after it).
pub(super) async fn in_flight<T, F: std::future::Future<Output = anyhow::Result<T>>>(requests: impl Iterator<Item = F>) -> anyhow::Result<Vec<T>> {
    use futures::StreamExt;
    futures::stream::iter(requests).buffered(IN_FLIGHT).try_collect().await
}

pub fn encode_spans(spans: &[Span]) -> Vec<Bson> {
    spans.iter().map(|s| Bson::Array(vec![s.lo.clone(), s.hi.clone()])).collect()
}

pub fn decode_spans(value: &[Bson]) -> anyhow::Result<Vec<Span>> {
    value
        .iter()
        .map(|v| match v.as_array().map(Vec::as_slice) {
            Some([lo, hi]) => Ok(Span { lo: lo.clone(), hi: hi.clone() }),
            _ => anyhow::bail!("a span is not [lo, hi]"),
        })
        .collect()
}

pub fn encode_chunk_lists(lists: &[Vec<Chunk>]) -> Document {
    let lists: Vec<Bson> = lists
        .iter()
        .map(|l| Bson::Array(l.iter().map(|c| Bson::Array(vec![c.first.clone(), Bson::Int64(c.count as i64), Bson::Int64(c.digest as i64)])).collect()))
        .collect();
    doc! {"lists": lists}
}

fn decode_chunk_lists(reply: &Document) -> anyhow::Result<Vec<Vec<Chunk>>> {
    let mut out = Vec::new();
    for list in reply.get_array("lists").context("chunks: no lists")? {
        let mut chunks = Vec::new();
        for c in list.as_array().context("chunks: a list is not an array")? {
            match c.as_array().map(Vec::as_slice) {
                Some([first, Bson::Int64(count), Bson::Int64(digest)]) => chunks.push(Chunk { first: first.clone(), count: *count as u64, digest: *digest as u64 }),
                _ => anyhow::bail!("chunks: a chunk is not [first, count, digest]"),
            }
        }
        out.push(chunks);
    }
    Ok(out)
}

//! containerd's content store: write a blob (streaming, digest-checked by
//! containerd at commit), read one back, ask whether one is there.

use std::collections::HashMap;

use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::{InfoRequest, ReadContentRequest, WriteAction, WriteContentRequest};
use containerd_client::tonic::{Code, Status};
use futures_util::{Stream, StreamExt};
use tokio::sync::mpsc;

use super::Ctx;

/// Largest chunk per WRITE message (gRPC's default limit is 4 MiB).
pub(crate) const CHUNK: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ContentError {
    #[error("containerd content store: {0}")]
    Status(#[from] Status),
    /// The source of the bytes failed (registry, archive).
    #[error("{0}")]
    Source(String),
}

pub(crate) async fn exists(ctx: &Ctx, digest: &str) -> Result<bool, Status> {
    let mut c = ContentClient::new(ctx.channel.clone());
    match c.info(ctx.req(InfoRequest { digest: digest.to_string() })).await {
        Ok(_) => Ok(true),
        Err(s) if s.code() == Code::NotFound => Ok(false),
        Err(s) => Err(s),
    }
}

pub(crate) async fn read_all(ctx: &Ctx, digest: &str) -> Result<Vec<u8>, Status> {
    let mut c = ContentClient::new(ctx.channel.clone());
    let read = c.read(ctx.stream_req(ReadContentRequest { digest: digest.to_string(), offset: 0, size: 0 }));
    let mut stream = ctx.within("content read", read).await??.into_inner();
    let mut out = Vec::new();
    while let Some(chunk) = ctx.within("content read", stream.next()).await? {
        out.extend_from_slice(&chunk?.data);
    }
    Ok(out)
}

/// Streams `data` into the content store as blob `digest` of `size` bytes,
/// calling `progress(n)` for every chunk written. containerd verifies size
/// and digest at COMMIT. A blob that is already there is success (and the
/// source is not read at all).
///
/// Protocol (see notes/containerd.md): STAT{ref,total,expected} first,
/// then WRITE{offset,data} chunks, then COMMIT{offset = bytes written}.
pub(crate) async fn write_blob<S, E>(
    ctx: &Ctx,
    digest: &str,
    size: i64,
    labels: HashMap<String, String>,
    mut data: S,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<(), ContentError>
where
    S: Stream<Item = Result<bytes::Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let mut c = ContentClient::new(ctx.channel.clone());
    let (tx, rx) = mpsc::channel::<WriteContentRequest>(4);
    // The digest as ref: a retry after a crash resumes (or truncates) the
    // same ingest; two concurrent writers of one blob get "locked" and retry.
    let reference = format!("steward-{}", digest.replace(':', "-"));
    let base = WriteContentRequest {
        r#ref: reference.clone(),
        total: size,
        expected: digest.to_string(),
        ..Default::default()
    };
    // Queue STAT before the call: the server reads the first message before
    // it answers, so awaiting the call first would deadlock.
    let stat = WriteContentRequest { action: WriteAction::Stat as i32, ..base.clone() };
    if tx.send(stat).await.is_err() {
        return Err(ContentError::Source("content write stream closed".into()));
    }
    let outbound = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let mut responses = match ctx.within("content write", c.write(ctx.stream_req(outbound))).await? {
        Ok(r) => r.into_inner(),
        Err(s) if s.code() == Code::AlreadyExists => return Ok(()),
        Err(s) => return Err(s.into()),
    };
    let next = |r: Option<Result<_, Status>>| -> Result<Option<containerd_client::services::v1::WriteContentResponse>, Status> {
        r.transpose()
    };
    match next(ctx.within("content write", responses.next()).await?) {
        Ok(_) => {}
        Err(s) if s.code() == Code::AlreadyExists => return Ok(()),
        Err(s) => return Err(s.into()),
    }
    let mut offset: i64 = 0;
    while let Some(chunk) = data.next().await {
        let chunk = chunk.map_err(|e| ContentError::Source(e.to_string()))?;
        for piece in chunk.chunks(CHUNK) {
            let msg = WriteContentRequest {
                action: WriteAction::Write as i32,
                offset,
                data: piece.to_vec(),
                ..base.clone()
            };
            if tx.send(msg).await.is_err() {
                break;
            }
            match next(ctx.within("content write", responses.next()).await?) {
                Ok(_) => {}
                Err(s) if s.code() == Code::AlreadyExists => return Ok(()),
                Err(s) => return Err(s.into()),
            }
            offset += piece.len() as i64;
            progress(piece.len() as u64);
        }
    }
    if offset != size {
        return Err(ContentError::Source(format!("{digest}: got {offset} bytes, expected {size}")));
    }
    let commit = WriteContentRequest { action: WriteAction::Commit as i32, offset, labels, ..base };
    if tx.send(commit).await.is_err() {
        return Err(ContentError::Source("content write stream closed".into()));
    }
    match next(ctx.within("content write", responses.next()).await?) {
        Ok(_) => Ok(()),
        Err(s) if s.code() == Code::AlreadyExists => Ok(()),
        Err(s) => Err(s.into()),
    }
}

/// [`write_blob`] for bytes already in memory (manifests, configs).
pub(crate) async fn write_bytes(
    ctx: &Ctx,
    digest: &str,
    data: Vec<u8>,
    labels: HashMap<String, String>,
) -> Result<(), ContentError> {
    let size = data.len() as i64;
    let stream = futures_util::stream::iter([Ok::<_, std::convert::Infallible>(bytes::Bytes::from(data))]);
    write_blob(ctx, digest, size, labels, stream, &|_| {}).await
}

//! The device client reads each response frame exactly: a body cut short is an error, never
//! a short batch, and over TCP, where responses to pipelined requests follow each other on one
//! stream, no byte of the next frame is taken with the current one. The servers here are
//! hand-written misbehaving or tightly packed peers on 127.0.0.1 (the QUIC one on the device
//! service's own endpoint), so the client's reads are what is tested.

use std::sync::Arc;
use std::time::Duration;

use edge_node::device::{quic::bind_server, ClientError, DeviceClient, DeviceServiceConfig};
use edge_node::metrics::Metrics;
use protocol::wire::device::{frame_body_len, ChunkStatus, ChunksPiecesBuilder, Request, FRAME_HEADER_BYTES};
use protocol::wire::ChunkRange;
use protocol::ChunkId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(20);

/// A response header announcing `announced` body bytes, followed by only `sent` of them.
fn cut_short(announced: u32, sent: usize) -> Vec<u8> {
    let mut frame = announced.to_le_bytes().to_vec();
    frame.extend((0..sent).map(|i| i as u8));
    frame
}

/// A whole `Chunks` response frame serving each `(id, body)`.
fn chunks_frame(items: &[(ChunkId, Vec<u8>)]) -> Vec<u8> {
    let mut builder = ChunksPiecesBuilder::<Vec<u8>>::new();
    for (id, body) in items {
        builder.push_ok(*id, body.clone()).unwrap();
    }
    let pieces = builder.finish();
    let mut frame = Vec::new();
    for (fields, body) in pieces.pieces {
        frame.extend_from_slice(&pieces.fields[fields]);
        frame.extend_from_slice(body.as_deref().unwrap_or_default());
    }
    frame
}

/// Reads one request frame from `stream`; `None` once the client has gone.
async fn read_request(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    stream.read_exact(&mut header).await.ok()?;
    let mut body = vec![0u8; frame_body_len(header, 1 << 20).ok()?];
    stream.read_exact(&mut body).await.ok()?;
    Some(body)
}

fn is_eof(result: Result<Vec<u8>, ClientError>) -> bool {
    matches!(result, Err(ClientError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof)
}

fn metadata_request() -> Vec<u8> {
    Request::GetMetadata { name: "timestamp.json" }.to_frame().unwrap()
}

#[tokio::test]
async fn a_tcp_response_cut_short_is_an_error_not_a_short_body() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        read_request(&mut stream).await.unwrap();
        stream.write_all(&cut_short(1000, 10)).await.unwrap();
        // Dropping the stream closes it: the client sees the end 990 bytes early.
    });
    let mut client = DeviceClient::connect_tcp(addr).await.unwrap();
    let result = timeout(WAIT, client.request_frame(&metadata_request())).await.unwrap();
    assert!(is_eof(result), "a body cut short must be UnexpectedEof");
    server.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quic_response_cut_short_is_an_error_not_a_short_body() {
    let endpoint =
        bind_server(&DeviceServiceConfig::default(), "127.0.0.1:0".parse().unwrap(), Arc::new(Metrics::default()))
            .unwrap();
    let addr = endpoint.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let connection = endpoint.accept().await.unwrap().await.unwrap();
        let (mut send, mut recv) = connection.accept_bi().await.unwrap();
        let mut header = [0u8; FRAME_HEADER_BYTES];
        recv.read_exact(&mut header).await.unwrap();
        // A body of 200 KiB is announced; 100 KiB arrive, in several packets, then the
        // stream finishes.
        send.write_all(&cut_short(200 << 10, 100 << 10)).await.unwrap();
        send.finish().unwrap();
        let _ = send.stopped().await;
        connection.closed().await;
    });
    let mut client = DeviceClient::connect_quic(addr).await.unwrap();
    let result = timeout(WAIT, client.request_frame(&metadata_request())).await.unwrap();
    assert!(is_eof(result), "a body cut short must be UnexpectedEof");
    drop(client);
    timeout(WAIT, server).await.unwrap().unwrap();
}

/// Three pipelined batches answered in one write, frames back to back (and the last one
/// empty of chunks' bytes but for one): each batch gets exactly its own frame.
#[tokio::test]
async fn pipelined_tcp_responses_packed_together_are_each_read_exactly() {
    let bodies: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i; 1000 + 7 * usize::from(i)]).collect();
    let ids: Vec<ChunkId> = bodies.iter().map(|b| ChunkId::of(b)).collect();
    let frames: Vec<u8> = bodies.iter().zip(&ids).flat_map(|(body, id)| chunks_frame(&[(*id, body.clone())])).collect();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        for _ in 0..3 {
            read_request(&mut stream).await.unwrap();
        }
        stream.write_all(&frames).await.unwrap();
        // Keep the connection open until the client is done reading.
        let _ = read_request(&mut stream).await;
    });
    let mut client = DeviceClient::connect_tcp(addr).await.unwrap();
    let batches: Vec<Vec<ChunkRange>> = ids.iter().map(|id| vec![ChunkRange::whole(*id)]).collect();
    let mut got = Vec::new();
    timeout(
        WAIT,
        client.get_chunks_pipelined(&batches, 3, |index, batch| {
            let items: Vec<_> = batch.items().iter().collect();
            assert_eq!(items.len(), 1);
            let ChunkStatus::Ok(data) = items[0].status else { panic!("batch {index} not served") };
            got.push((index, items[0].id, data.to_vec()));
            Ok(())
        }),
    )
    .await
    .unwrap()
    .unwrap();
    let want: Vec<_> = bodies.into_iter().zip(ids).enumerate().map(|(i, (body, id))| (i, id, body)).collect();
    assert_eq!(got, want);
    drop(client);
    timeout(WAIT, server).await.unwrap().unwrap();
}

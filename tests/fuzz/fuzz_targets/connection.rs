//! One FastCGI connection's state machine (`fcgi::connection::serve`), driven
//! with sequences of records made from the input (structure-aware: each
//! record is a kind, an id and a short content, so that most inputs are
//! well-framed and reach the states deep inside: multiplexed requests,
//! ABORT in every state, GET_VALUES, STDIN after the end, oversized PARAMS),
//! then the peer's half-close. A fake dispatcher answers each request from
//! a plain thread through the request's `Exchange`, as app threads do. No
//! Python. Found: a panic, a hang past the time limit, a leak.
#![no_main]

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wsgi_gateway::fcgi::connection::{Context, serve};
use wsgi_gateway::fcgi::idle::IdleList;
use wsgi_gateway::fcgi::job::{Dispatch, Job, Limits};

/// Answers each request from its own thread (joined at the end of the
/// input, so that no thread outlives it).
#[derive(Default)]
struct Answer {
    threads: std::sync::Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl Dispatch for Answer {
    fn dispatch(&self, mut job: Job) -> Result<(), Box<Job>> {
        let thread = std::thread::spawn(move || {
            use std::io::Read;
            let mut body = Vec::new();
            let _ = job.body.read_to_end(&mut body);
            if let Some(ending) = job.exchange.ending() {
                let frames = ending.frames(b"Status: 200 OK\r\n\r\n", Bytes::from(body), 0);
                ending.write(frames);
            }
        });
        self.threads.lock().unwrap().push(thread);
        Ok(())
    }
}

/// The input as records: [kind, id, len, content...] repeated; a kind byte
/// above 11 means raw bytes (the rest of that chunk sent as they are).
fn wire(data: &[u8]) -> BytesMut {
    let mut out = BytesMut::new();
    let mut at = 0;
    while at + 3 <= data.len() {
        let (kind, id, len) = (data[at], data[at + 1], usize::from(data[at + 2]));
        at += 3;
        let content = &data[at..(at + len).min(data.len())];
        at += content.len();
        if kind > 11 {
            out.extend_from_slice(content);
            continue;
        }
        let content: Vec<u8> = match kind {
            // BEGIN_REQUEST: role from the first byte, flags from the second.
            1 => {
                let role = u16::from(content.first().copied().unwrap_or(1) % 4);
                let flags = content.get(1).copied().unwrap_or(0);
                let mut body = vec![0u8; 8];
                body[..2].copy_from_slice(&role.to_be_bytes());
                body[2] = flags;
                body
            }
            _ => content.to_vec(),
        };
        let len = content.len() as u16;
        out.extend_from_slice(&[1, kind, 0, id % 4, (len >> 8) as u8, len as u8, 0, 0]);
        out.extend_from_slice(&content);
    }
    out
}

fuzz_target!(|data: &[u8]| {
    // As in the binaries (Rust's runtime does it for them): a write to a
    // peer that left is EPIPE, not a signal.
    static IGNORE_SIGPIPE: std::sync::Once = std::sync::Once::new();
    IGNORE_SIGPIPE.call_once(|| {
        // SAFETY: setting a signal's disposition to "ignore" installs no handler.
        let _ = unsafe {
            nix::sys::signal::signal(
                nix::sys::signal::Signal::SIGPIPE,
                nix::sys::signal::SigHandler::SigIgn,
            )
        };
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (server, mut client) = tokio::net::UnixStream::pair().unwrap();
        let (_stop, shutdown) = tokio::sync::watch::channel(false);
        let answer = Arc::new(Answer::default());
        let context = Context {
            dispatch: answer.clone(),
            limits: Arc::new(Limits {
                max_params: 512,
                max_conns: 4,
                max_reqs: 4,
                body_buffer_size: 256,
                header_timeout: std::time::Duration::from_millis(200),
                ..Limits::default()
            }),
            shutdown,
            idle: Arc::new(IdleList::default()),
        };
        let task = tokio::spawn(serve(server, context, BytesMut::new(), (false, None)));
        let bytes = wire(data);
        let reader = tokio::spawn(async move {
            let _ = client.write_all(&bytes).await;
            let _ = client.shutdown().await;
            let mut sink = Vec::new();
            let _ = client.read_to_end(&mut sink).await;
        });
        // Whatever was sent, the connection ends: no hang.
        let ended = tokio::time::timeout(std::time::Duration::from_secs(10), task).await;
        assert!(ended.is_ok(), "the connection did not end");
        let _ = reader.await;
        // Every request's thread is done once its connection is gone.
        let threads = std::mem::take(&mut *answer.threads.lock().unwrap());
        for thread in threads {
            thread.join().unwrap();
        }
    });
});

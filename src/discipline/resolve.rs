//! Name resolution off the discipline thread: a helper thread runs the
//! system resolver (`getaddrinfo` through `ToSocketAddrs`) so that a slow
//! or dead DNS server never stalls polling. Queries go in, answers come out
//! on channels; the discipline thread picks answers up on its next turn.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::thread::JoinHandle;

/// Why a name did not resolve.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The system resolver failed (unknown name, no DNS server, ...).
    #[error("{0}")]
    Lookup(#[source] std::io::Error),
    /// The name exists but has no addresses.
    #[error("no addresses")]
    NoAddresses,
}

/// One resolved (or failed) name.
#[derive(Debug)]
pub struct Answer {
    /// The caller's tag (which upstream asked).
    pub tag: usize,
    /// The name asked for.
    pub host: String,
    /// Its addresses (deduplicated, in resolver order), or why not.
    pub result: Result<Vec<SocketAddr>, ResolveError>,
}

/// The resolver thread's handle. Dropping it ends the thread.
pub struct Resolver {
    queries: Option<Sender<(usize, String, u16)>>,
    answers: Receiver<Answer>,
    thread: Option<JoinHandle<()>>,
}

impl Resolver {
    /// Starts the helper thread.
    pub fn spawn() -> std::io::Result<Resolver> {
        let (qtx, qrx) = mpsc::channel::<(usize, String, u16)>();
        let (atx, arx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("fastntp-dns".into())
            .spawn(move || {
                for (tag, host, port) in qrx {
                    let result = resolve(&host, port);
                    if atx.send(Answer { tag, host, result }).is_err() {
                        break;
                    }
                }
            })?;
        Ok(Resolver {
            queries: Some(qtx),
            answers: arx,
            thread: Some(thread),
        })
    }

    /// Asks for `host:port`'s addresses; the answer carries `tag`.
    pub fn query(&self, tag: usize, host: &str, port: u16) {
        if let Some(q) = &self.queries {
            // A send error means the thread is gone; the query just goes
            // unanswered and is retried by the caller's schedule.
            let _ = q.send((tag, host.to_owned(), port));
        }
    }

    /// Answers that arrived so far.
    pub fn answers(&self) -> Vec<Answer> {
        let mut out = Vec::new();
        loop {
            match self.answers.try_recv() {
                Ok(a) => out.push(a),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return out,
            }
        }
    }
}

impl Drop for Resolver {
    fn drop(&mut self) {
        self.queries = None;
        // A lookup in progress cannot be interrupted; do not wait for it.
        drop(self.thread.take());
    }
}

fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, ResolveError> {
    let addrs = (host, port)
        .to_socket_addrs()
        .map_err(ResolveError::Lookup)?;
    let mut out: Vec<SocketAddr> = Vec::new();
    for a in addrs {
        if !out.contains(&a) {
            out.push(a);
        }
    }
    if out.is_empty() {
        return Err(ResolveError::NoAddresses);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn literal_addresses_and_localhost_resolve_without_the_internet() {
        let r = Resolver::spawn().unwrap();
        r.query(1, "127.0.0.1", 1123);
        r.query(2, "localhost", 123);
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while got.len() < 2 && Instant::now() < deadline {
            got.extend(r.answers());
            std::thread::sleep(Duration::from_millis(5));
        }
        got.sort_by_key(|a| a.tag);
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(
            got[0].result.as_ref().unwrap(),
            &vec!["127.0.0.1:1123".parse::<SocketAddr>().unwrap()]
        );
        assert!(got[1]
            .result
            .as_ref()
            .unwrap()
            .iter()
            .all(|a| a.ip().is_loopback()));
    }
}

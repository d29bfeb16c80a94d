//! TCP checker: a connection within the timeout, and optionally an answer
//! to a request (see [`TcpExchange`]).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};

use super::Probe;
use crate::verdict::Verdict;
use holdfast_config::checker::{TcpChecker, TcpExchange};

/// Most bytes of an answer kept while looking for the expected ones: a
/// server streaming forever must not grow the daemon.
const MAX_ANSWER: usize = 64 * 1024;

/// Probe of a TCP checker.
#[derive(Debug)]
pub struct TcpProbe {
    address: SocketAddr,
    exchange: Option<TcpExchange>,
    timeout: Duration,
}

impl TcpProbe {
    pub fn new(checker: &TcpChecker, timeout: Duration) -> Self {
        Self {
            address: SocketAddr::new(checker.address, checker.port),
            exchange: checker.exchange.clone(),
            timeout,
        }
    }

    /// The request/answer part; `deadline` is shared with the connection.
    async fn exchange(
        &self,
        stream: &mut TcpStream,
        exchange: &TcpExchange,
        deadline: Instant,
    ) -> Result<(), String> {
        if !exchange.send.is_empty() {
            match timeout_at(deadline, stream.write_all(&exchange.send)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(format!("connected, but sending the request: {e}")),
                Err(_) => {
                    return Err(format!(
                        "connected, but the request was not taken within {:?}: application hung?",
                        self.timeout
                    ))
                }
            }
        }
        let mut answer = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = match timeout_at(deadline, stream.read(&mut chunk)).await {
                Ok(Ok(n)) => n,
                Ok(Err(e)) => return Err(format!("connected, but reading the answer: {e}")),
                Err(_) => {
                    return Err(format!(
                        "connected, but no expected answer within {:?}: application hung?",
                        self.timeout
                    ))
                }
            };
            if n == 0 {
                return Err("connected, but closed before the expected answer".to_string());
            }
            if answer.len() + n > MAX_ANSWER {
                return Err(format!(
                    "connected, but no expected answer in the first {MAX_ANSWER} bytes"
                ));
            }
            answer.extend_from_slice(&chunk[..n]);
            let found = exchange.expect.is_empty()
                || answer
                    .windows(exchange.expect.len())
                    .any(|w| w == exchange.expect.as_slice());
            if found {
                return Ok(());
            }
        }
    }
}

impl Probe for TcpProbe {
    async fn probe(&mut self) -> Verdict {
        let deadline = Instant::now() + self.timeout;
        let down = |why: String| Verdict::Down(format!("tcp {}: {why}", self.address));
        let mut stream = match timeout_at(deadline, TcpStream::connect(self.address)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return down(e.to_string()),
            Err(_) => return down(format!("no connection within {:?}", self.timeout)),
        };
        if let Some(exchange) = &self.exchange {
            if let Err(why) = self.exchange(&mut stream, exchange, deadline).await {
                return down(why);
            }
        }
        Verdict::Up
    }
}

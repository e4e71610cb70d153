//! A TCP front on 127.0.0.1 that forwards each connection to a service's
//! plain port, terminating TLS first when it is given a TLS acceptor (for a
//! service that cannot do TLS itself), and that can cut the service off from
//! its clients: [`Front::cut_off`] closes every open connection and stops
//! listening, so clients get "connection refused" as from a dead server,
//! while the service behind keeps running with all its data;
//! [`Front::restore`] listens on the same port again. That is a broker outage
//! as clients see it, without depending on what the service keeps across a
//! restart of its own.

use std::{
    io,
    net::{Ipv4Addr, SocketAddr, TcpListener as StdTcpListener},
    time::{Duration, Instant},
};

use tokio::{
    net::{TcpListener, TcpSocket, TcpStream},
    sync::watch,
    task::JoinSet,
};
use tokio_rustls::TlsAcceptor;

/// How long [`Front::restore`] tries to listen on its old port again.
const REBIND_TIMEOUT: Duration = Duration::from_secs(10);

/// Forwards connections to a backend port until dropped; see the module docs.
/// It runs on a runtime of its own, so sync and async tests can use it alike.
pub struct Front {
    port: u16,
    /// What the test asked for: serving (`true`) or cut off.
    wanted: watch::Sender<bool>,
    /// What the front does: `Ok(true)` once it listens, `Ok(false)` once the
    /// listener and every connection are closed, `Err` if it cannot listen again.
    state: watch::Receiver<Result<bool, String>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Front {
    /// A front that forwards the plain byte stream.
    pub fn plain(backend_port: u16) -> io::Result<Self> {
        Self::start(None, backend_port)
    }

    /// A front that terminates TLS with `acceptor`, then forwards the plain
    /// stream. A client whose handshake fails (one that does not trust the
    /// certificate) is just disconnected, as a TLS server does.
    pub fn tls(acceptor: TlsAcceptor, backend_port: u16) -> io::Result<Self> {
        Self::start(Some(acceptor), backend_port)
    }

    fn start(acceptor: Option<TlsAcceptor>, backend_port: u16) -> io::Result<Self> {
        // Bound here, synchronously, so the port is known (and can be
        // advertised) before the service starts; a test may already run
        // inside a runtime, so no blocking on one here.
        let listener = StdTcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let (wanted, wanted_rx) = watch::channel(true);
        let (state_tx, state) = watch::channel(Ok(true));
        runtime.spawn(serve(listener, acceptor, backend_port, wanted_rx, state_tx));
        Ok(Self {
            port,
            wanted,
            state,
            runtime: Some(runtime),
        })
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Closes every open connection and stops listening; returns once
    /// nothing is left open, so a client's next connection is refused.
    pub fn cut_off(&self) {
        self.wanted.send_replace(false);
        self.wait_for(false)
            .expect("a front that stops serving cannot fail");
    }

    /// Listens on the same port again; returns once it does.
    pub fn restore(&self) -> io::Result<()> {
        self.wanted.send_replace(true);
        self.wait_for(true)
    }

    fn wait_for(&self, serving: bool) -> io::Result<()> {
        let mut state = self.state.clone();
        let result = futures::executor::block_on(
            // Done when it serves as asked, or when it failed to.
            state.wait_for(|state| match state {
                Ok(now) => *now == serving,
                Err(_) => true,
            }),
        )
        .map(|state| state.clone());
        match result {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(message)) => Err(io::Error::other(message)),
            Err(_) => Err(io::Error::other("the front has stopped")),
        }
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        // Not a blocking shutdown: the owner may be dropped inside a runtime.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Serves while wanted; between outages, listens on the same port again.
async fn serve(
    first: StdTcpListener,
    acceptor: Option<TlsAcceptor>,
    backend_port: u16,
    mut wanted: watch::Receiver<bool>,
    state: watch::Sender<Result<bool, String>>,
) {
    let address = SocketAddr::from((
        Ipv4Addr::LOCALHOST,
        first.local_addr().map_or(0, |a| a.port()),
    ));
    let mut first = Some(first);
    loop {
        if wanted.wait_for(|serving| *serving).await.is_err() {
            return;
        }
        let listener = match first.take() {
            Some(listener) => TcpListener::from_std(listener),
            None => rebind(address).await,
        };
        let listener = match listener {
            Ok(listener) => listener,
            Err(error) => {
                let _ = state.send_replace(Err(format!("listening on {address} again: {error}")));
                return;
            }
        };
        let _ = state.send_replace(Ok(true));
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((client, _)) = accepted else { continue };
                    connections.spawn(forward(client, acceptor.clone(), backend_port));
                    while connections.try_join_next().is_some() {}
                }
                _ = wanted.wait_for(|serving| !*serving) => break,
            }
        }
        // Refuse new connections, then close the open ones.
        drop(listener);
        connections.shutdown().await;
        let _ = state.send_replace(Ok(false));
    }
}

/// Listens on `address` again, retrying while the old socket lingers.
async fn rebind(address: SocketAddr) -> io::Result<TcpListener> {
    let deadline = Instant::now() + REBIND_TIMEOUT;
    loop {
        let attempt = TcpSocket::new_v4().and_then(|socket| {
            socket.set_reuseaddr(true)?;
            socket.bind(address)?;
            socket.listen(1024)
        });
        match attempt {
            Ok(listener) => return Ok(listener),
            Err(error) if Instant::now() > deadline => return Err(error),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Copies one client connection to and from the backend until either side
/// closes it (or the front cuts it off by aborting this task).
async fn forward(client: TcpStream, acceptor: Option<TlsAcceptor>, backend_port: u16) {
    let backend = TcpStream::connect((Ipv4Addr::LOCALHOST, backend_port));
    match acceptor {
        Some(acceptor) => {
            let Ok(mut tls) = acceptor.accept(client).await else {
                return;
            };
            let Ok(mut backend) = backend.await else {
                return;
            };
            let _ = tokio::io::copy_bidirectional(&mut tls, &mut backend).await;
        }
        None => {
            let mut client = client;
            let Ok(mut backend) = backend.await else {
                return;
            };
            let _ = tokio::io::copy_bidirectional(&mut client, &mut backend).await;
        }
    }
}

//! A TCP proxy on a free loopback port that can freeze: while frozen it forwards nothing in
//! either direction but keeps every socket open (new connections are accepted and held too),
//! the way a hung server or a middlebox that drops packets looks to a client whose kernel
//! still sees the connection alive.

use super::Result;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

pub struct FreezeProxy {
    pub port: u16,
    flags: Arc<Flags>,
    acceptor: Option<JoinHandle<()>>,
}

struct Flags {
    frozen: AtomicBool,
    stop: AtomicBool,
}

const POLL: Duration = Duration::from_millis(10);

impl FreezeProxy {
    /// Forwards `127.0.0.1:<port>` to `upstream`.
    pub fn start(upstream: SocketAddr) -> Result<FreezeProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("proxy bind: {e}"))?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let flags = Arc::new(Flags { frozen: AtomicBool::new(false), stop: AtomicBool::new(false) });
        let f = flags.clone();
        let acceptor = std::thread::spawn(move || accept_loop(listener, upstream, f));
        Ok(FreezeProxy { port, flags, acceptor: Some(acceptor) })
    }

    /// Stops (true) or resumes (false) forwarding on every connection, old and new.
    pub fn freeze(&self, frozen: bool) {
        self.flags.frozen.store(frozen, Ordering::SeqCst);
    }
}

impl Drop for FreezeProxy {
    fn drop(&mut self) {
        self.flags.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
    }
}

fn accept_loop(listener: TcpListener, upstream: SocketAddr, flags: Arc<Flags>) {
    while !flags.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, _)) => {
                let flags = flags.clone();
                std::thread::spawn(move || connect_and_pump(client, upstream, flags));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(POLL),
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

fn connect_and_pump(client: TcpStream, upstream: SocketAddr, flags: Arc<Flags>) {
    // A connection accepted while frozen is held, not forwarded, until the thaw.
    while flags.frozen.load(Ordering::SeqCst) {
        if flags.stop.load(Ordering::SeqCst) {
            return;
        }
        std::thread::sleep(POLL);
    }
    let Ok(server) = TcpStream::connect(upstream) else { return };
    let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else { return };
    let f2 = flags.clone();
    let up = std::thread::spawn(move || pump(client, server, flags));
    pump(s2, c2, f2);
    let _ = up.join();
}

/// Copies `from` to `to` until either side ends, pausing while frozen.
fn pump(mut from: TcpStream, mut to: TcpStream, flags: Arc<Flags>) {
    let _ = from.set_read_timeout(Some(POLL));
    let mut buf = [0u8; 16 * 1024];
    loop {
        if flags.stop.load(Ordering::SeqCst) {
            break;
        }
        if flags.frozen.load(Ordering::SeqCst) {
            std::thread::sleep(POLL);
            continue;
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                // Frozen after the read: hold the bytes until the thaw.
                while flags.frozen.load(Ordering::SeqCst) && !flags.stop.load(Ordering::SeqCst) {
                    std::thread::sleep(POLL);
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(_) => break,
        }
    }
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}

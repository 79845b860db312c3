//! What an association runs over: a TCP socket whose reads keep a deadline, used as it is or
//! under TLS (a rustls connection of either side, configured and handshaken in `crate::tls`).

use rustls::{ConnectionCommon, SideData, StreamOwned};
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::ops::{Deref, DerefMut};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// A read may end this much after the deadline: setting the socket's timeout again before
/// every read would cost a system call per read.
const DEADLINE_SLACK: Duration = Duration::from_millis(250);
/// Reads smaller than this are served from a buffer filled by one system call: PDU headers,
/// and rustls, which reads at most 4 KiB at a time.
const READ_BUFFER: usize = 64 << 10;

/// A TCP connection whose reads fail with `TimedOut` once its deadline has passed, however
/// the bytes trickle in (one byte a second keeps no read alive past it).
pub struct Socket {
    tcp: TcpStream,
    deadline: Option<Instant>,
    /// The read timeout the socket has now.
    timeout: Option<Duration>,
    /// Bytes received and not yet read: `buffer[start..end]`.
    buffer: Box<[u8]>,
    start: usize,
    end: usize,
}

impl Socket {
    pub fn new(tcp: TcpStream) -> Socket {
        Socket {
            tcp,
            deadline: None,
            timeout: None,
            buffer: vec![0; READ_BUFFER].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }

    /// Reads from now on must be done by `at` (None: they may wait forever).
    pub fn set_deadline(&mut self, at: Option<Instant>) {
        self.deadline = at;
    }

    /// Sets the socket's read timeout so that a read started now ends by the deadline (within
    /// `DEADLINE_SLACK`), or fails if it has passed.
    fn arm(&mut self) -> io::Result<()> {
        let wanted = match self.deadline {
            None => None,
            Some(deadline) => {
                let now = Instant::now();
                let remaining = deadline.saturating_duration_since(now);
                if remaining.is_zero() {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the peer took too long",
                    ));
                }
                // The timeout set runs from each read's start: keep it while a read started now
                // would end neither before the deadline nor much after it.
                let keep = self.timeout.is_some_and(|t| {
                    let ends = now + t;
                    ends >= deadline && ends <= deadline + DEADLINE_SLACK
                });
                if keep {
                    return Ok(());
                }
                Some(remaining)
            }
        };
        if wanted != self.timeout {
            self.tcp.set_read_timeout(wanted)?;
            self.timeout = wanted;
        }
        Ok(())
    }

    /// Whether bytes have arrived that nothing has read yet, without waiting for any.
    fn bytes_waiting(&self) -> bool {
        if self.start < self.end {
            return true;
        }
        let mut byte = 0u8;
        // SAFETY: a one-byte peek into a local, on the socket this owns.
        let waiting = unsafe {
            libc::recv(
                self.tcp.as_raw_fd(),
                (&mut byte as *mut u8).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        waiting > 0
    }

    /// Reads from the socket itself, by the deadline.
    fn receive(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            self.arm()?;
            match self.tcp.read(buf) {
                // The timeout ran out: `arm` says whether the deadline did too. A signal
                // interrupted the wait (EINTR, which a socket with a timeout gets even under
                // SA_RESTART): no caller, rustls's handshake included, need see it.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                result => return result,
            }
        }
    }

    /// Bytes already buffered, copied into `buf`.
    fn buffered(&mut self, buf: &mut [u8]) -> usize {
        let n = buf.len().min(self.end - self.start);
        buf[..n].copy_from_slice(&self.buffer[self.start..self.start + n]);
        self.start += n;
        n
    }

    /// What has arrived, never waiting: `WouldBlock` when nothing has.
    fn read_arrived(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.start < self.end {
            return Ok(self.buffered(buf));
        }
        // SAFETY: `buf` is writable for its length, on the socket this owns.
        let read = unsafe {
            libc::recv(
                self.tcp.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if read < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(read as usize)
    }
}

impl Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.start == self.end {
            if buf.len() >= READ_BUFFER {
                return self.receive(buf);
            }
            let mut buffer = std::mem::take(&mut self.buffer);
            let received = self.receive(&mut buffer);
            self.buffer = buffer;
            // Only a read that succeeded moves the window: after a failed one (a signal's
            // EINTR, which `read_exact` retries), the bytes already served must not be again.
            self.end = received?;
            self.start = 0;
        }
        Ok(self.buffered(buf))
    }
}

impl Write for Socket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        retry_interrupted(|| self.tcp.write(buf))
    }

    /// rustls hands its records over as several pieces (headers apart): one system call.
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        retry_interrupted(|| self.tcp.write_vectored(bufs))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A system call again while a signal interrupts it (EINTR): rustls's handshake and alert
/// loops stop at the first error, `write_all` would not.
fn retry_interrupted<T>(mut call: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match call() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            result => return result,
        }
    }
}

/// Reads whatever has arrived, never waiting: `WouldBlock` when nothing has.
struct Arrived<'a>(&'a mut Socket);

impl Read for Arrived<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read_arrived(buf)
    }
}

/// A byte stream an association runs over.
pub trait Channel: Read + Write + Send {
    fn socket(&mut self) -> &mut Socket;
    /// Whether the peer has sent something not yet read, without waiting for it.
    fn input_waiting(&mut self) -> io::Result<bool>;
    /// Ends the connection both ways (an association released or aborted).
    fn close(&mut self);
}

impl Channel for Socket {
    fn socket(&mut self) -> &mut Socket {
        self
    }

    fn input_waiting(&mut self) -> io::Result<bool> {
        Ok(self.bytes_waiting())
    }

    fn close(&mut self) {
        // Already closed by the peer, or broken: nothing left to end.
        let _ = self.tcp.shutdown(Shutdown::Both);
    }
}

/// The connection's descriptor, for whoever must notice the peer speaking or leaving while
/// this thread is busy elsewhere (a C-MOVE's host watching its requestor).
impl AsRawFd for Socket {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.tcp.as_raw_fd()
    }
}

/// A TLS connection over a socket: the listener's (`rustls::ServerConnection`) or the SCU's
/// (`rustls::ClientConnection`).
pub type TlsStream<C> = StreamOwned<C, Socket>;

impl<C, D> Channel for TlsStream<C>
where
    C: DerefMut + Deref<Target = ConnectionCommon<D>> + Send,
    D: SideData,
{
    fn socket(&mut self) -> &mut Socket {
        &mut self.sock
    }

    /// Plaintext rustls has decrypted already, or records waiting on the socket that decrypt
    /// to some: a peeked byte may be only part of a record, or no application data at all.
    fn input_waiting(&mut self) -> io::Result<bool> {
        let state = self.conn.process_new_packets().map_err(invalid_data)?;
        if state.plaintext_bytes_to_read() > 0 {
            return Ok(true);
        }
        if !self.sock.bytes_waiting() {
            return Ok(false);
        }
        match self.conn.read_tls(&mut Arrived(&mut self.sock)) {
            // The peer closed: the next read says so.
            Ok(0) => return Ok(true),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e),
        }
        let state = self.conn.process_new_packets().map_err(invalid_data)?;
        Ok(state.plaintext_bytes_to_read() > 0 || state.peer_has_closed())
    }

    /// A close_notify first, so that the peer sees the end as intended, not as truncation.
    fn close(&mut self) {
        self.conn.send_close_notify();
        while self.conn.wants_write() {
            if self.conn.write_tls(&mut self.sock).is_err() {
                break;
            }
        }
        self.sock.close();
    }
}

fn invalid_data(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    extern "C" fn ignore(_: libc::c_int) {}

    #[test]
    fn a_read_interrupted_by_a_signal_never_serves_bytes_again() {
        // A handler without SA_RESTART, as CPython installs its own: a blocked recv() on the
        // thread the signal lands on fails with EINTR, which read_exact retries.
        // SAFETY: installs a handler that does nothing, for a signal nothing else here uses.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = ignore as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigaction(libc::SIGUSR2, &action, std::ptr::null_mut());
        }
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut peer = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let mut socket = Socket::new(listener.accept().unwrap().0);
        peer.write_all(&[b'A'; 100]).unwrap();
        let (started, blocked) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut first = [0u8; 100];
            socket.read_exact(&mut first).unwrap();
            // SAFETY: pthread_self has no preconditions.
            started.send(unsafe { libc::pthread_self() }).unwrap();
            let mut second = [0u8; 100];
            socket.read_exact(&mut second).unwrap();
            (first, second)
        });
        let thread = blocked.recv().unwrap();
        // Signals every 20 ms for 400 ms: the reader is blocked in recv() for most of them,
        // however loaded the machine.
        for _ in 0..20 {
            std::thread::sleep(Duration::from_millis(20));
            // SAFETY: the reader thread is alive until it has read the bytes written below.
            assert_eq!(unsafe { libc::pthread_kill(thread, libc::SIGUSR2) }, 0);
        }
        peer.write_all(&[b'B'; 100]).unwrap();
        let (first, second) = reader.join().unwrap();
        assert_eq!(first, [b'A'; 100]);
        assert_eq!(second, [b'B'; 100]);
    }

    #[test]
    fn a_trickle_of_bytes_does_not_outlive_the_deadline() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let trickle = std::thread::spawn(move || {
            let mut peer = TcpStream::connect(address).unwrap();
            for _ in 0..20 {
                if peer.write_all(b"x").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let mut socket = Socket::new(listener.accept().unwrap().0);
        let started = Instant::now();
        let deadline = Duration::from_millis(500);
        socket.set_deadline(Some(started + deadline));
        let error = socket.read_exact(&mut [0u8; 64]).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        let took = started.elapsed();
        assert!(
            took >= deadline && took < deadline + DEADLINE_SLACK * 2,
            "{took:?}"
        );
        // What arrived and was not read is still seen as waiting.
        std::thread::sleep(Duration::from_millis(150));
        assert!(socket.input_waiting().unwrap());
        drop(socket);
        trickle.join().unwrap();
    }
}

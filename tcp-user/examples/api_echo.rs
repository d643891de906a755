//! An application written against the library API (`tcp_user::api`): an
//! echo server, and a client that sends bytes to an echo server and checks
//! what comes back.
//!
//! ```text
//! api_echo serve IFACE PORT
//!     Echo server on the interface's address. Prints `READY ADDR:PORT`
//!     once listening, then one line per finished connection.
//! api_echo connect IFACE ADDR:PORT BYTES [SYN_RETRIES]
//!     Connects (active open through the endpoint), writes BYTES of a
//!     pattern, half-closes, reads the echo and compares. Prints `OK BYTES`,
//!     or `ERROR KIND: message` (KIND is the std::io::ErrorKind) and exits 1.
//! api_echo abort IFACE ADDR:PORT
//!     Connects, writes `ping`, then resets the connection (TcpStream::abort).
//! ```
//!
//! Run as root (XDP, AF_XDP), e.g. in the namespaces `cargo xtask run`
//! builds: `ip netns exec tcpu-demo-ep target/release/examples/api_echo
//! serve tcpu-demo-ep0 7007`.

use std::net::SocketAddrV4;
use std::process::ExitCode;

use tcp_user::api::{Endpoint, EndpointConfig, TcpStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn usage() -> ExitCode {
    eprintln!(
        "usage: api_echo serve IFACE PORT\n       api_echo connect IFACE ADDR:PORT BYTES [SYN_RETRIES]\n       api_echo abort IFACE ADDR:PORT"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("api_echo: starting tokio: {e}");
            return ExitCode::FAILURE;
        }
    };
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["serve", iface, port] => {
            let Ok(port) = port.parse::<u16>() else {
                return usage();
            };
            report(rt.block_on(serve(iface, port)).map(|()| String::new()))
        }
        ["connect", iface, addr, bytes] | ["connect", iface, addr, bytes, _] => {
            let (Ok(addr), Ok(bytes)) = (addr.parse::<SocketAddrV4>(), bytes.parse::<usize>())
            else {
                return usage();
            };
            let syn_retries = match args.get(4).map(|s| s.parse::<u32>()) {
                None => None,
                Some(Ok(n)) => Some(n),
                Some(Err(_)) => return usage(),
            };
            report(rt.block_on(connect(iface, addr, bytes, syn_retries)))
        }
        ["abort", iface, addr] => {
            let Ok(addr) = addr.parse::<SocketAddrV4>() else {
                return usage();
            };
            report(rt.block_on(abort(iface, addr)))
        }
        _ => usage(),
    }
}

async fn abort(iface: &str, addr: SocketAddrV4) -> std::io::Result<String> {
    let endpoint = Endpoint::bind(EndpointConfig::new(iface)).await?;
    let mut stream = endpoint.connect(addr).await?;
    stream.write_all(b"ping").await?;
    // Let the data go before the reset overtakes it.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    stream.abort();
    // The driver sends the RST on its next turn.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    Ok("OK aborted".into())
}

fn report(result: std::io::Result<String>) -> ExitCode {
    match result {
        Ok(line) => {
            if !line.is_empty() {
                println!("{line}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("ERROR {:?}: {e}", e.kind());
            ExitCode::FAILURE
        }
    }
}

async fn serve(iface: &str, port: u16) -> std::io::Result<()> {
    let endpoint = Endpoint::bind(EndpointConfig::new(iface)).await?;
    let listener = endpoint.listen(port)?;
    println!("READY {}", listener.local_addr());
    loop {
        let (stream, peer) = listener.accept().await?;
        tokio::spawn(async move {
            match echo(stream).await {
                Ok(n) => println!("{peer}: echoed {n} bytes"),
                Err(e) => println!("{peer}: {:?}: {e}", e.kind()),
            }
        });
    }
}

/// Echoes until the peer half-closes, then closes (dropping the stream).
async fn echo(stream: TcpStream) -> std::io::Result<u64> {
    let (mut rx, mut tx) = stream.into_split();
    let n = tokio::io::copy(&mut rx, &mut tx).await?;
    tx.shutdown().await?;
    Ok(n)
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

async fn connect(
    iface: &str,
    addr: SocketAddrV4,
    bytes: usize,
    syn_retries: Option<u32>,
) -> std::io::Result<String> {
    let mut cfg = EndpointConfig::new(iface);
    if let Some(n) = syn_retries {
        cfg.tcp.syn_retries = n;
    }
    let endpoint = Endpoint::bind(cfg).await?;
    let stream = endpoint.connect(addr).await?;
    stream.set_nodelay(true)?;
    let data = pattern(bytes);
    let (mut rx, mut tx) = stream.into_split();
    let writer = {
        let data = data.clone();
        tokio::spawn(async move {
            tx.write_all(&data).await?;
            tx.shutdown().await?;
            Ok::<_, std::io::Error>(tx)
        })
    };
    let mut back = Vec::with_capacity(bytes);
    rx.read_to_end(&mut back).await?;
    let _tx = writer.await.map_err(std::io::Error::other)??;
    if back != data {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("the echo differs ({} bytes back of {bytes})", back.len()),
        ));
    }
    Ok(format!("OK {bytes}"))
}

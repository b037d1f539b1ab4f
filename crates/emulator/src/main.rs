//! `truelayer-auth-emulator [--port N]`: runs the emulator on 127.0.0.1 until interrupted.

use std::io::Write;
use std::net::SocketAddr;

use truelayer_auth_emulator::Emulator;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let port: u16 = match std::env::args().skip_while(|a| a != "--port").nth(1) {
        Some(p) => p
            .parse()
            .map_err(|_| std::io::Error::other("--port takes a port number"))?,
        None => 0,
    };
    let emulator = Emulator::bind(SocketAddr::from(([127, 0, 0, 1], port))).await?;
    eprintln!(
        "TrueLayer auth emulator listening on {} (Ctrl-C stops it)",
        emulator.url()
    );
    std::io::stdout().write_all(emulator.env_lines().as_bytes())?;
    tokio::signal::ctrl_c().await
}

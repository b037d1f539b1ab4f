//! `truelayer-auth-emulator`: runs the emulator until interrupted.

use std::net::SocketAddr;

use truelayer_auth_emulator::Emulator;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let port: u16 = std::env::args()
        .skip_while(|a| a != "--port")
        .nth(1)
        .map(|p| {
            p.parse()
                .map_err(|_| std::io::Error::other("--port takes a number"))
        })
        .transpose()?
        .unwrap_or(0);
    let emulator = Emulator::bind(SocketAddr::from(([127, 0, 0, 1], port))).await?;
    eprintln!("TrueLayer auth emulator listening on {}", emulator.url());
    eprintln!("client_id:     {}", emulator.client_id());
    eprintln!("client_secret: {}", emulator.client_secret());
    tokio::signal::ctrl_c().await?;
    Ok(())
}

//! `truelayer-auth-emulator [--port N] [--webhook-url URL] [--payment-step-ms N]`: runs the
//! emulator on 127.0.0.1 until interrupted.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use truelayer_auth_emulator::Emulator;

const HELP: &str = "\
truelayer-auth-emulator: a local TrueLayer auth server and Payments API stand-in

Usage: truelayer-auth-emulator [--port N] [--webhook-url URL] [--payment-step-ms N]

Options:
  --port N             listen on 127.0.0.1:N (default 0: a free port)
  --webhook-url URL    POST payment webhooks (signed, Tl-Signature with a jku) to this
                       http:// URL
  --payment-step-ms N  move each new payment one status forward every N ms until settled
                       (default with --webhook-url: 2000; 0 turns it off)
  -h, --help           print this help

Prints TRUELAYER_ENV, TRUELAYER_CLIENT_ID and TRUELAYER_CLIENT_SECRET on standard output.

Admin routes (JSON bodies):
  POST /emulator/faults                  {\"faults\": [...], \"random_rate\": 0.1, \"random\": [...]}
  DELETE /emulator/faults                clear faults
  POST /emulator/latency                 {\"millis\": N}
  POST /emulator/token-lifetime          {\"seconds\": N | null}
  POST /emulator/clients/{id}/rotate     a new client secret
  POST /emulator/clients/{id}/signing-keys {\"kid\": ..., \"public_key_pem\": ...}
  POST /emulator/revoke                  revoke every token issued so far
  GET  /emulator/stats                   counters
  POST /emulator/webhooks                {\"url\": \"http://...\" | null}
  POST /emulator/payment-schedule        {\"step_millis\": N | null}
  POST /emulator/payments/{id}/status    {\"status\": \"settled\"} or
                                         {\"status\": \"failed\", \"failure_reason\": \"expired\"}
  GET  /webhooks/jwks                    the webhook signing key (the jku)
";

struct Args {
    port: u16,
    webhook_url: Option<String>,
    payment_step_ms: Option<u64>,
}

fn parse_args() -> Result<Option<Args>, String> {
    let mut args = Args {
        port: 0,
        webhook_url: None,
        payment_step_ms: None,
    };
    let mut argv = std::env::args().skip(1);
    while let Some(arg) = argv.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((name, value)) => (name.to_owned(), Some(value.to_owned())),
            None => (arg, None),
        };
        let mut value = |what: &str| {
            inline
                .clone()
                .or_else(|| argv.next())
                .ok_or_else(|| format!("{name} takes {what}"))
        };
        match name.as_str() {
            "-h" | "--help" => return Ok(None),
            "--port" => {
                args.port = value("a port number")?
                    .parse()
                    .map_err(|_| "--port takes a port number".to_owned())?;
            }
            "--webhook-url" => args.webhook_url = Some(value("a URL")?),
            "--payment-step-ms" => {
                args.payment_step_ms = Some(
                    value("a number of milliseconds")?
                        .parse()
                        .map_err(|_| "--payment-step-ms takes a number of milliseconds")?,
                );
            }
            other => return Err(format!("unknown argument {other:?} (see --help)")),
        }
    }
    Ok(Some(args))
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(Some(args)) => args,
        Ok(None) => {
            let _ = std::io::stdout().write_all(HELP.as_bytes());
            return ExitCode::SUCCESS;
        }
        Err(why) => {
            eprintln!("truelayer-auth-emulator: {why}");
            return ExitCode::from(2);
        }
    };
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(why) => {
            eprintln!("truelayer-auth-emulator: {why}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let emulator = Emulator::bind(SocketAddr::from(([127, 0, 0, 1], args.port)))
        .await
        .map_err(|e| format!("could not listen on 127.0.0.1:{}: {e}", args.port))?;
    emulator.set_webhook_url(args.webhook_url.as_deref())?;
    let default_step = args.webhook_url.as_ref().map(|_| 2000);
    let step = args.payment_step_ms.or(default_step).filter(|ms| *ms > 0);
    emulator.set_payment_schedule(step.map(Duration::from_millis));
    eprintln!(
        "TrueLayer auth emulator listening on {} (Ctrl-C stops it); webhooks signed with jku {}",
        emulator.url(),
        emulator.webhook_jku()
    );
    if let Some(url) = &args.webhook_url {
        match step {
            Some(ms) => eprintln!(
                "webhooks to {url}; new payments move one status every {ms} ms until settled"
            ),
            None => eprintln!(
                "webhooks to {url}; payments move only through POST /emulator/payments/{{id}}/status"
            ),
        }
    }
    std::io::stdout()
        .write_all(emulator.env_lines().as_bytes())
        .map_err(|e| e.to_string())?;
    tokio::signal::ctrl_c().await.map_err(|e| e.to_string())
}

//! `mqgate status --watch`: the status table redrawn in place every `--interval`, as
//! `watch mqgate status` would, until Ctrl-C. A failed request (gateway restarting,
//! not reachable) is shown in place of the table and the loop goes on.

use super::*;

/// Clear the screen and put the cursor home (ANSI), before each frame.
pub const CLEAR: &str = "\x1b[H\x1b[2J";

/// Redraw the status table of the gateway named by `admin` / `config` every
/// `interval`; returns only when the target cannot be found at all (exit 1).
pub fn watch(admin: Option<String>, config: Option<PathBuf>, interval: Duration) -> ExitCode {
    let t = match target(admin, config.as_deref(), std::env::var(TOKEN_ENV).ok()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("mqgate: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(note) = &t.note {
        eprintln!("mqgate: {note}");
    }
    loop {
        let body = match run_request(
            &Request::Status,
            &t.base,
            t.token.as_deref(),
            t.token_problem.as_ref(),
        ) {
            Ok(out) => out,
            Err(e) => format!("mqgate: {e}\n"),
        };
        let mut frame = String::with_capacity(body.len() + 128);
        frame.push_str(CLEAR);
        let _ = writeln!(
            frame,
            "every {}: {} (Ctrl-C to stop)\n",
            super::check::human(interval),
            t.base
        );
        frame.push_str(&body);
        {
            use std::io::Write as _;
            let mut out = std::io::stdout().lock();
            if out
                .write_all(frame.as_bytes())
                .and_then(|_| out.flush())
                .is_err()
            {
                return ExitCode::SUCCESS; // the terminal or pipe went away
            }
        }
        std::thread::sleep(interval);
    }
}

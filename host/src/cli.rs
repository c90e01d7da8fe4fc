//! How the command-line tools fail: one line on stderr starting with `error:` that says what
//! to do, and exit code 1 — for usage mistakes clap catches as for failures found later.
//! Operators and scripts read the last line of stderr; a multi-line report, a clap usage
//! block or a `Caused by:` list hides it. `edge-node`, `seeder` and `device-client` all fail
//! through these functions.

use clap::Parser;

/// `message` on one line: line breaks inside it (TOML parse errors, clap usage) become
/// `; `, blank lines and surrounding space go.
pub fn one_line(message: &str) -> String {
    message.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; ")
}

/// Prints `error: <error chain on one line>` to stderr.
pub fn print_error(error: &anyhow::Error) {
    eprintln!("error: {}", one_line(&format!("{error:#}")));
}

/// Parses the command line like `P::parse`, except that a usage error prints one `error:`
/// line (with a pointer to `--help`) and exits 1; `--help` and `--version` print and exit 0.
pub fn parse_args<P: Parser>() -> P {
    match P::try_parse() {
        Ok(parsed) => parsed,
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            let rendered = e.render().to_string();
            // clap's text: "error: WHAT\n\n[tip]\n\nUsage: ...\n\nFor more information, try '--help'."
            let what = rendered.split("\nUsage:").next().unwrap_or(&rendered);
            let what = what.trim().strip_prefix("error:").unwrap_or(what).trim();
            eprintln!("error: {}; run with --help for usage", one_line(what));
            std::process::exit(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_line_messages_become_one_line() {
        assert_eq!(
            one_line("config x is invalid: TOML parse error at line 1, column 5\n  |\n1 | a =\n  |     ^\n"),
            "config x is invalid: TOML parse error at line 1, column 5; |; 1 | a =; |     ^"
        );
        assert_eq!(one_line("plain"), "plain");
    }
}

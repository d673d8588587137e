//! The command line, parsed by hand: a subcommand, its positional arguments and
//! `--option value` (or `--option=value`) pairs. Every option takes a value.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

pub const USAGE: &str = "usage:
  cairn-webtest serve [--port 8080] [--term-file PATH]
  cairn-webtest get URL [--timeout-s 5] [--retries 0] [--retry-delay-ms 500] [--expect TEXT]
  cairn-webtest resolve NAME
  cairn-webtest --version | --help
names are resolved with $CAIRN_RESOLV_CONF, else /etc/resolv.conf";

/// What to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Help,
    Version,
    Serve(ServeOptions),
    Get(GetOptions),
    Resolve { name: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeOptions {
    /// 0 takes an ephemeral port (the start line says which).
    pub port: u16,
    pub term_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GetOptions {
    pub url: String,
    /// The budget of one attempt: resolution, connect and response together.
    pub timeout: Duration,
    /// Attempts after the first.
    pub retries: u32,
    pub retry_delay: Duration,
    pub expect: Option<String>,
}

pub fn parse(argv: &[OsString]) -> Result<Command, String> {
    let argv = argv
        .iter()
        .map(|a| {
            a.to_str()
                .map(str::to_string)
                .ok_or_else(|| format!("argument {a:?} is not UTF-8"))
        })
        .collect::<Result<Vec<String>, String>>()?;
    let Some((sub, rest)) = argv.split_first() else {
        return Err("no subcommand given".into());
    };
    match sub.as_str() {
        "-h" | "--help" | "help" => Ok(Command::Help),
        "-v" | "--version" => Ok(Command::Version),
        "serve" => {
            let mut o = Options::split(rest, &["--port", "--term-file"])?;
            o.positional::<0>("serve")?;
            Ok(Command::Serve(ServeOptions {
                port: o.number("--port")?.unwrap_or(8080),
                term_file: o.take("--term-file").map(PathBuf::from),
            }))
        }
        "get" => {
            let mut o = Options::split(
                rest,
                &["--timeout-s", "--retries", "--retry-delay-ms", "--expect"],
            )?;
            let [url] = o.positional::<1>("get URL")?;
            let timeout_s: f64 = o.number("--timeout-s")?.unwrap_or(5.0);
            let timeout = Duration::try_from_secs_f64(timeout_s)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| format!("--timeout-s must be positive, got {timeout_s}"))?;
            Ok(Command::Get(GetOptions {
                url,
                timeout,
                retries: o.number("--retries")?.unwrap_or(0),
                retry_delay: Duration::from_millis(o.number("--retry-delay-ms")?.unwrap_or(500)),
                expect: o.take("--expect"),
            }))
        }
        "resolve" => {
            let mut o = Options::split(rest, &[])?;
            let [name] = o.positional::<1>("resolve NAME")?;
            Ok(Command::Resolve { name })
        }
        other => Err(format!("unknown subcommand {other:?}")),
    }
}

/// A subcommand's arguments split into positionals and known options.
struct Options {
    positional: Vec<String>,
    options: Vec<(&'static str, String)>,
}

impl Options {
    fn split(args: &[String], known: &[&'static str]) -> Result<Options, String> {
        let mut out = Options {
            positional: Vec::new(),
            options: Vec::new(),
        };
        let mut iter = args.iter();
        while let Some(arg) = iter.next() {
            if !arg.starts_with("--") {
                out.positional.push(arg.clone());
                continue;
            }
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) => (f, Some(v.to_string())),
                None => (arg.as_str(), None),
            };
            let Some(&flag) = known.iter().find(|k| **k == flag) else {
                return Err(format!("unknown option {flag:?}"));
            };
            let value = match inline {
                Some(v) => v,
                None => iter
                    .next()
                    .cloned()
                    .ok_or_else(|| format!("option {flag} needs a value"))?,
            };
            if out.options.iter().any(|(f, _)| *f == flag) {
                return Err(format!("option {flag} given twice"));
            }
            out.options.push((flag, value));
        }
        Ok(out)
    }

    /// Exactly `N` positional arguments.
    fn positional<const N: usize>(&mut self, usage: &str) -> Result<[String; N], String> {
        let given = std::mem::take(&mut self.positional);
        let count = given.len();
        given
            .try_into()
            .map_err(|_| format!("{usage}: expected {N} argument(s), got {count}"))
    }

    fn take(&mut self, flag: &str) -> Option<String> {
        let i = self.options.iter().position(|(f, _)| *f == flag)?;
        Some(self.options.remove(i).1)
    }

    fn number<T: std::str::FromStr>(&mut self, flag: &str) -> Result<Option<T>, String>
    where
        T::Err: std::fmt::Display,
    {
        self.take(flag)
            .map(|v| {
                v.parse::<T>()
                    .map_err(|e| format!("option {flag}: {v:?} is not a valid number: {e}"))
            })
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_strs(args: &[&str]) -> Result<Command, String> {
        parse(&args.iter().map(OsString::from).collect::<Vec<_>>())
    }

    #[test]
    fn serve_defaults_and_options() {
        assert_eq!(
            parse_strs(&["serve"]),
            Ok(Command::Serve(ServeOptions {
                port: 8080,
                term_file: None
            }))
        );
        assert_eq!(
            parse_strs(&["serve", "--port=0", "--term-file", "/data/term.log"]),
            Ok(Command::Serve(ServeOptions {
                port: 0,
                term_file: Some("/data/term.log".into())
            }))
        );
        assert!(parse_strs(&["serve", "--port", "70000"]).is_err());
        assert!(parse_strs(&["serve", "--port"]).is_err());
        assert!(parse_strs(&["serve", "extra"]).is_err());
        assert!(parse_strs(&["serve", "--port", "1", "--port", "2"]).is_err());
    }

    #[test]
    fn get_defaults_and_options() {
        assert_eq!(
            parse_strs(&["get", "http://web/"]),
            Ok(Command::Get(GetOptions {
                url: "http://web/".into(),
                timeout: Duration::from_secs(5),
                retries: 0,
                retry_delay: Duration::from_millis(500),
                expect: None,
            }))
        );
        assert_eq!(
            parse_strs(&[
                "get",
                "--retries",
                "3",
                "http://10.0.0.1:8080/healthz",
                "--timeout-s",
                "0.5",
                "--retry-delay-ms=10",
                "--expect",
                "ok",
            ]),
            Ok(Command::Get(GetOptions {
                url: "http://10.0.0.1:8080/healthz".into(),
                timeout: Duration::from_millis(500),
                retries: 3,
                retry_delay: Duration::from_millis(10),
                expect: Some("ok".into()),
            }))
        );
        assert!(parse_strs(&["get"]).is_err());
        assert!(parse_strs(&["get", "http://a/", "--timeout-s", "0"]).is_err());
        assert!(parse_strs(&["get", "http://a/", "--timeout-s", "-1"]).is_err());
        assert!(parse_strs(&["get", "http://a/", "--bogus", "1"]).is_err());
    }

    #[test]
    fn resolve_and_others() {
        assert_eq!(
            parse_strs(&["resolve", "web"]),
            Ok(Command::Resolve { name: "web".into() })
        );
        assert!(parse_strs(&["resolve"]).is_err());
        assert!(parse_strs(&["resolve", "a", "b"]).is_err());
        assert_eq!(parse_strs(&["--version"]), Ok(Command::Version));
        assert_eq!(parse_strs(&["--help"]), Ok(Command::Help));
        assert!(parse_strs(&[]).is_err());
        assert!(parse_strs(&["frobnicate"]).is_err());
    }
}

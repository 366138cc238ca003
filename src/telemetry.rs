//! Logging. Log lines never carry card data: sensitive values are types whose `Debug` redacts
//! them and that cannot be formatted with `Display`, and the request span records the path only.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber, writing to stderr (stdout is for command output). The filter
/// comes from `PAYVAULT_LOG` (`RUST_LOG` syntax), default `info`; `PAYVAULT_LOG_FORMAT=json`
/// writes one JSON object per line, with the request span (and its request id) on each.
pub fn init() {
    let filter = EnvFilter::try_from_env("PAYVAULT_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    // Colours only for a terminal, not for a log file or collector.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = if std::env::var("PAYVAULT_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json")) {
        builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init()
    } else {
        builder.try_init()
    };
}

/// Disables core dumps and ptrace attachment by other processes of the same user: a core dump
/// of a vault process would hold card data and keys (PCI DSS 3.3.1 lists crash dumps).
pub fn harden_process() -> std::io::Result<()> {
    use rustix::process::{setrlimit, Resource, Rlimit};
    setrlimit(
        Resource::Core,
        Rlimit {
            current: Some(0),
            maximum: Some(0),
        },
    )?;
    #[cfg(target_os = "linux")]
    rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)?;
    Ok(())
}

//! Runs the host tools the image assembly shells out to (mksquashfs, objcopy,
//! qemu-img) and turns a failure into an error that names the tool and carries
//! the tail of its stderr.

use std::process::{Command, Output};

/// How many bytes of a failed tool's stderr an error keeps.
const STDERR_TAIL_BYTES: usize = 2000;

/// A host tool could not be started or exited unsuccessfully.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// The program could not be spawned (usually: not installed).
    #[error("cannot run {tool}: {source}")]
    Spawn {
        /// Program name.
        tool: String,
        /// Underlying spawn error.
        source: std::io::Error,
    },
    /// The program ran and failed.
    #[error("{tool} failed ({status}): {stderr_tail}")]
    Failed {
        /// Program name.
        tool: String,
        /// Exit status as printed by std.
        status: String,
        /// The last part of its stderr (and stdout when stderr is empty).
        stderr_tail: String,
    },
}

/// Runs `cmd` to completion, capturing its output; a non-zero exit becomes
/// [`ToolError::Failed`] with the tail of stderr.
pub fn run(cmd: &mut Command) -> Result<Output, ToolError> {
    let tool = cmd.get_program().to_string_lossy().into_owned();
    let output = cmd.output().map_err(|source| ToolError::Spawn {
        tool: tool.clone(),
        source,
    })?;
    if output.status.success() {
        return Ok(output);
    }
    let text = if output.stderr.iter().all(u8::is_ascii_whitespace) {
        &output.stdout
    } else {
        &output.stderr
    };
    Err(ToolError::Failed {
        tool,
        status: output.status.to_string(),
        stderr_tail: tail(text),
    })
}

/// The last [`STDERR_TAIL_BYTES`] of `bytes`, lossily decoded and trimmed.
fn tail(bytes: &[u8]) -> String {
    let start = bytes.len().saturating_sub(STDERR_TAIL_BYTES);
    String::from_utf8_lossy(&bytes[start..]).trim().to_string()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn failure_carries_tool_and_stderr() {
        let err = run(Command::new("sh").args(["-c", "echo boom >&2; exit 3"]))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("sh failed"), "{err}");
        assert!(err.contains("boom"), "{err}");
    }

    #[test]
    fn missing_tool_is_spawn_error() {
        let err = run(&mut Command::new("/nonexistent/cairn-tool"));
        assert!(matches!(err, Err(ToolError::Spawn { .. })));
    }
}
